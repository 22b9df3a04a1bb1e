// Package mesh is inter-node encryption: when a distributed job asks for
// EnableInterContainerTrafficEncryption, everything its hosts send each
// other is encrypted and mutually authenticated with an identity of that
// job alone, while the training code opens plain TCP sockets and changes
// nothing. Anything the mechanism cannot carry is dropped, never sent in
// clear.
//
// # Pieces
//
// Supervisor (in convoy) gives each job a Job whose HostSetup the executor
// runs in every host's network namespace before any container starts:
//
//   - The job's CA is made in memory for the first host (pki.NewEphemeralCA)
//     and dropped once every host has its certificate, so no certificate of
//     the job can ever be issued again; its key is never written anywhere.
//   - The host's rules (rules.go) go into its namespace: an nftables table
//     and one routing rule. They are the fail-closed part and outlive the
//     agent: with no agent, connections to peers are refused or reset, and
//     nothing leaves in clear.
//   - The host's agent (agent.go, `convoy mesh-agent`) starts in the
//     namespace under nsenter, as a process of its own: its keys never enter
//     convoy's memory, and its death is a clean, observable event. It
//     generates the host's P-256 key, which never leaves its memory; the
//     supervisor answers its public key with a certificate naming
//     convoy://job/<job>/host/<host> (URI SAN) and the host's address (IP
//     SAN), valid for the job's longest run. The agent dies with convoy
//     (Pdeathsig, and the end of its standard input), and KillStrays sweeps
//     up after a crash.
//   - OnFailure reports an agent that exits while its job runs; the
//     sagemaker runner then stops the job and fails it with that reason.
//     Restarting the agent instead is impossible by design: it would need a
//     new certificate, and the job's CA no longer exists.
//
// # Rules
//
// In each host's namespace, for packets the container sends (mark 0: a
// container has no CAP_NET_ADMIN and cannot set one):
//
//   - TCP to a port a peer listens on (set "open", which the agent keeps from
//     its peers' announcements) is redirected to the agent on
//     127.0.0.1:RedirectPort; the agent reads the original destination with
//     SO_ORIGINAL_DST and refuses any that is not a peer;
//   - other TCP to a peer is refused with a reset, exactly what the peer
//     would answer without the mesh: the common "retry connect until the
//     peer listens" loop keeps working, and a connect never succeeds to a
//     port that is not there;
//   - anything else to the job's network, broadcast or multicast (UDP, ICMP,
//     …) is counted and dropped; the agent says so, once, in the job's log.
//
// Inbound from the job's network only the agents' tunnels pass
// (TunnelPort, and replies to the agent's own), so a namespace attached to
// the bridge with a spoofed address reaches no application, and an agent
// accepts a tunnel only from a peer that proves, in the TLS handshake, that
// it holds the key of a certificate of this job's CA naming a host of this
// job at the very address it connects from.
//
// The agent's sockets carry its mark and are exempt. When it connects to
// an application on behalf of a peer, it binds the peer's address
// (IP_TRANSPARENT), so that the application sees who connected, as MPI
// and friends check; conntrack marks that connection and a routing rule
// brings the application's replies back to the agent instead of out of
// eth0.
//
// # Tunnels
//
// A tunnel is a TCP connection between two agents: a TLS 1.3 handshake
// with mutual authentication (tlsconf.MeshClient, tlsconf.MeshServer:
// the profile's key exchange groups, AES-GCM suites under fips), then this
// package's record layer (record.go): AES-256-GCM records of up to 1 MiB,
// keys exported from the handshake (RFC 8446 §7.5, one per direction),
// random nonces (cipher.NewGCMWithRandomNonce, the form Go's FIPS 140-3
// module approves), the record's sequence number in the additional data,
// and an explicit end of each direction, so that truncation, reordering,
// replay and tampering are errors. A tunnel carries one application
// connection at a time, opened by a first record naming the port, and
// then the next: each agent keeps a few handshaked tunnels per peer ready
// and reuses those whose connection ended cleanly, so a new connection
// pays no handshake. Control tunnels carry each host's listening TCP ports
// (sock_diag, polled every 50 ms) to its peers' "open" sets. How each
// direction of a connection ends is mirrored on the other side: end of
// file as a half-close, a reset or a broken tunnel as a reset: an
// application never reads an end of file its peer did not send.
//
// # Why this design, and what was written by hand
//
// The kernel of the machines convoy targets has neither kTLS nor ESP nor
// WireGuard, and the peers' traffic must be TCP-only with UDP dropped, so
// the data path is a user-space relay; DESIGN.md's survey put TLS proxies
// at 0.22–0.29 of plain veth throughput and wireguard-go at 0.16. Bytes
// copied and wake-ups per byte, not AES, set the cost on two cores, so the
// relay moves few, large chunks: measured on this repository's 2-vCPU
// machine (bench/internode, iperf3, one stream), 256 KiB records gave
// 6.1–6.6 Gb/s, 512 KiB 6.7, 1 MiB 7.3–7.5, 2 MiB no more; 64 KiB records
// were 12 % slower than 256 KiB. crypto/tls's own records are 16 KiB and
// each Read returns one: in a prototype, a relay on them did 3.8–4.3 Gb/s
// where the same relay with 256 KiB records of this layer did 4.8–5.1. Two
// goroutines per direction, larger socket buffers, SO_RCVLOWAT set to a
// record's missing bytes and GOMAXPROCS=1 in the agent measured no
// better, and were not kept. AES-128 seals 13 % faster than AES-256 here,
// which moved the whole path by 0–4 %, within the noise of the shared
// machine; AES-256 is kept, to match the strength of the post-quantum key
// exchange the handshake prefers (ML-KEM-768). The result, one stream:
// 7.3–7.4 Gb/s, 0.89–0.93 of what crypto/tls does alone in one process
// and 1.9× stunnel, at 2.0 CPU-seconds per GB (plain TCP 0.6); with four
// streams the two cores are the limit, at 6.9–7.7 Gb/s. bench/RESULTS.md
// has the figures and where the time goes.
//
// Everything here is written by hand on crypto/tls, nftables and netlink:
// a sidecar proxy (ghostunnel, stunnel, Envoy) would be a second program
// to ship and configure, authenticates only the TLS peer (not "a host of
// this job at this address"), is slower (bench/internode), and neither
// redirects transparently nor drops what it cannot carry. The record layer
// is small (record.go) and fuzzed; its parsers (records, ports, sock_diag
// messages, identities) all have fuzz targets.
//
// # Limits
//
// IPv4 and TCP only: anything else between hosts is dropped (the job's
// log says so). Ports 1021 and 1022 of the hosts are the agent's. A port
// that starts listening reaches the peers' rules within about 50 ms;
// until then a connection to it is refused, as if it were not listening
// yet.
package mesh
