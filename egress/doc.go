// Package egress decides and enforces where a tool's network traffic may go.
//
// A tool asks for patterns in tool.json ("network": {"egress": [...]}); the operator grants
// patterns in the config; the call's Policy is Effective(asked, granted): asked ∩ granted, minus
// the deny set (loopback, RFC 1918, CGNAT, link-local, multicast, reserved and documentation
// ranges, IPv4-mapped, NAT64, Teredo and 6to4 IPv6, ULA, the host's own addresses), which only an
// explicit operator allow_private entry reopens. What was asked and not granted is reported,
// never silently widened.
//
// One Gate per daemon enforces policies for every call: an egress proxy that receives the
// containers' TCP (redirected by nftables on the host side of each call's veth), reads the TLS
// SNI or HTTP Host without terminating TLS, resolves the name itself and dials only addresses
// outside the deny set; and a DNS server that answers only names the policy allows and never
// forwards any other name upstream. A call's policy is bound to the container-side address of
// its veth (Gate.Bind). The Wasm tier's http_request host function dials through Gate.Dialer,
// which applies the same checks.
package egress
