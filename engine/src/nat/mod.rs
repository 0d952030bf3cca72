//! NAT: destination endpoint selection (DNAT) and source port allocation (SNAT).
