package p2p

import (
	"testing"
	"time"

	ma "github.com/multiformats/go-multiaddr"
)

func TestTCPFirstRanker(t *testing.T) {
	addr := func(s string) ma.Multiaddr { return ma.StringCast(s) }
	delays := map[string]time.Duration{}
	for _, d := range tcpFirstRanker([]ma.Multiaddr{
		addr("/ip4/192.168.1.5/udp/4001/quic-v1"),
		addr("/ip4/192.168.1.5/tcp/4001"),
		addr("/ip4/192.0.0.70/udp/4001/quic-v1"),
		addr("/ip4/192.0.0.70/tcp/4001"),
		addr("/ip4/192.0.0.66/tcp/7001/p2p/12D3KooWGzh5ePTjsj6QbGpdFmGAEkc4aL8yNAjdw1BzoXQEEJ8U/p2p-circuit"),
	}) {
		delays[d.Addr.String()] = d.Delay
	}
	if len(delays) != 5 {
		t.Fatalf("ranked %d of 5 addresses: %v", len(delays), delays)
	}
	for _, c := range []struct{ tcp, quic string }{
		{"/ip4/192.168.1.5/tcp/4001", "/ip4/192.168.1.5/udp/4001/quic-v1"},
		{"/ip4/192.0.0.70/tcp/4001", "/ip4/192.0.0.70/udp/4001/quic-v1"},
	} {
		if delays[c.tcp] != 0 {
			t.Errorf("%s waits %v; TCP goes first", c.tcp, delays[c.tcp])
		}
		if delays[c.quic] <= delays[c.tcp] {
			t.Errorf("%s at %v is not after TCP", c.quic, delays[c.quic])
		}
	}
	circuit := "/ip4/192.0.0.66/tcp/7001/p2p/12D3KooWGzh5ePTjsj6QbGpdFmGAEkc4aL8yNAjdw1BzoXQEEJ8U/p2p-circuit"
	if delays[circuit] == 0 {
		t.Errorf("the relay is dialed at once although direct addresses exist")
	}
	// Only QUIC: dialed at once.
	only := tcpFirstRanker([]ma.Multiaddr{addr("/ip4/192.0.0.70/udp/4001/quic-v1")})
	if len(only) != 1 || only[0].Delay != 0 {
		t.Fatalf("a QUIC-only peer: %v", only)
	}
}
