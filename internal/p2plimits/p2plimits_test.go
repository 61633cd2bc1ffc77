package p2plimits

import (
	"net/netip"
	"testing"

	circuit "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/proto"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
)

func TestPeopleBehindOneNATMayAllConnect(t *testing.T) {
	nat := netip.MustParseAddr("192.0.0.70")
	l := rateLimiter(1024)
	for i := 0; i < 200; i++ {
		if !l.Allow(nat) {
			t.Fatalf("connection %d from one NAT address refused", i+1)
		}
	}
	// Still a limit: a flood from one address is cut.
	small := rateLimiter(64)
	allowed := 0
	for i := 0; i < 1000 && small.Allow(nat); i++ {
		allowed++
	}
	if allowed >= 1000 || allowed < 16 {
		t.Fatalf("a flood of 1000 got %d through", allowed)
	}
	for i := 0; i < 1000; i++ {
		if !small.Allow(netip.MustParseAddr("127.0.0.1")) {
			t.Fatal("loopback is limited")
		}
	}
}

func TestLimitsHoldEveryPeer(t *testing.T) {
	const peers = 1024
	l := limits(peers, nil).ToPartialLimitConfig()
	if in := int(l.System.ConnsInbound); in < peers {
		t.Fatalf("%d inbound connections for %d peers", in, peers)
	}
	if int(l.System.FD) < int(l.System.ConnsInbound) {
		t.Fatalf("%d descriptors for %d connections", l.System.FD, l.System.ConnsInbound)
	}
	if int(l.Transient.ConnsInbound) < peers/4 {
		t.Fatalf("only %d peers may be in their handshake at once", l.Transient.ConnsInbound)
	}
	low, high := watermarks(limits(peers, nil))
	if low < peers || high < low {
		t.Fatalf("the connection manager trims from %d down to %d, below %d peers", high, low, peers)
	}
	// Limits libp2p scales higher than ours stay as they are.
	if got := int(limits(8, nil).ToPartialLimitConfig().System.ConnsInbound); got < 64 {
		t.Fatalf("a small host lowered libp2p's default to %d", got)
	}
}

func TestNew(t *testing.T) {
	rm, cm, err := New(1024, 1024)
	if err != nil {
		t.Fatal(err)
	}
	defer rm.Close()
	defer cm.Close()
}

func TestRelayScopeFitsItsCircuits(t *testing.T) {
	const circuits, perCircuit = 2000, 128 << 10
	base := limits(1024, nil).ToPartialLimitConfig()
	l := limits(1024, &Relay{Circuits: circuits, MemoryPerCircuit: perCircuit}).ToPartialLimitConfig()
	svc := l.Service[relayv2.ServiceName]
	if int(svc.StreamsInbound) < circuits || int(svc.StreamsOutbound) < circuits || int(svc.Streams) < 2*circuits {
		t.Fatalf("relay service streams %+v for %d circuits", svc, circuits)
	}
	if int64(svc.Memory) < circuits*perCircuit {
		t.Fatalf("relay service memory %d for %d circuits of %d bytes", svc.Memory, circuits, perCircuit)
	}
	if int64(l.System.Memory) < int64(svc.Memory) || int(l.System.Streams) < int(svc.Streams) {
		t.Fatalf("the system scope (%d bytes, %d streams) is smaller than the relay's", l.System.Memory, l.System.Streams)
	}
	hop, stop := l.Protocol[circuit.ProtoIDv2Hop], l.Protocol[circuit.ProtoIDv2Stop]
	if int(hop.StreamsInbound) < circuits || int(stop.StreamsOutbound) < circuits {
		t.Fatalf("hop %+v, stop %+v for %d circuits", hop, stop, circuits)
	}
	// Without a relay, libp2p's scaled default stays (smaller here, which
	// is why the relay raises it).
	if d := base.Service[relayv2.ServiceName]; int(d.Streams) >= 2*circuits || d == svc {
		t.Fatalf("relay service without a relay: %+v", d)
	}
}
