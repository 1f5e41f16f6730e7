"""pycni-agent: cross-node pod networking (host-gw routes or a VXLAN overlay) from the Nodes' podCIDRs."""
