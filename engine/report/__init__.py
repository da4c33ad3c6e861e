"""The report stage: the candidate leaderboard, terminal tables, `leaderboard.md`,
`report.html`, plots and the scaling-law fit."""
