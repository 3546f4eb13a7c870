"""Bridge networking: networks, addresses, veths (pyroute2), NAT and published
ports (nftables). See docs/networking.md. `model` is pure; `netlink` and
`nft` are the kernel seams; `manager` is the daemon's trio-facing part."""
