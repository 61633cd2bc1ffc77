package p2p

import (
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// tcpFirstRanker orders the addresses of an ordinary dial so that a direct
// TCP connection is tried first and QUIC a moment later (libp2p's default
// does the opposite). A message is a few hundred bytes sent now and then:
// over the kernel's TCP it crosses loopback or a LAN in about 10 µs, over
// QUIC (quic-go, in user space) in about 60 µs (BenchmarkMessages). QUIC
// still connects where TCP does not, after the same happy-eyeballs delay
// libp2p gives TCP, and hole punching dials every address at once whatever
// the ranker says (swarm's simultaneous connect).
func tcpFirstRanker(addrs []ma.Multiaddr) []network.AddrDelay {
	var quic, rest []ma.Multiaddr
	for _, a := range addrs {
		if isQUIC(a) && !isCircuit(a.String()) {
			quic = append(quic, a)
		} else {
			rest = append(rest, a)
		}
	}
	out := swarm.DefaultDialRanker(rest)
	if len(rest) == 0 {
		return swarm.DefaultDialRanker(quic)
	}
	for _, d := range swarm.DefaultDialRanker(quic) {
		delay := swarm.PublicTCPDelay
		if manet.IsPrivateAddr(d.Addr) {
			delay = swarm.PrivateTCPDelay
		}
		out = append(out, network.AddrDelay{Addr: d.Addr, Delay: d.Delay + delay})
	}
	return out
}

func isQUIC(a ma.Multiaddr) bool {
	_, err := a.ValueForProtocol(ma.P_QUIC_V1)
	return err == nil
}

var _ network.DialRanker = tcpFirstRanker
