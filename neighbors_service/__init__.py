"""Topology (file or Kubernetes API) and successor-node election policies, served over HTTP."""
