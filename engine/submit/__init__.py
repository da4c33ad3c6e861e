"""Sending a sweep to a cluster: Ray job submission and KubeRay manifests."""
