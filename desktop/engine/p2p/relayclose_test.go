package p2p

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/proto"
	ma "github.com/multiformats/go-multiaddr"

	ct "github.com/e2em/e2em/internal/clustertest"
)

func loopbackHost(t *testing.T, opts ...libp2p.Option) host.Host {
	t.Helper()
	h, err := libp2p.New(append([]libp2p.Option{libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0")}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// reserveOnNewRelay starts a relay, gives b a reservation on it and
// returns the relay and the circuit address through it to b.
func reserveOnNewRelay(t *testing.T, b host.Host) (host.Host, ma.Multiaddr) {
	t.Helper()
	relay := loopbackHost(t, libp2p.EnableRelayService(), libp2p.ForceReachabilityPublic())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	info := peer.AddrInfo{ID: relay.ID(), Addrs: relay.Addrs()}
	// The relay service starts once the host counts itself public.
	ct.Eventually(t, 10*time.Second, func() error {
		_, err := client.Reserve(ctx, b, info)
		return err
	})
	circuit, err := ma.NewMultiaddr(fmt.Sprintf("%s/p2p/%s/p2p-circuit/p2p/%s", relay.Addrs()[0], relay.ID(), b.ID()))
	if err != nil {
		t.Fatal(err)
	}
	return relay, circuit
}

// relayedPair connects a to b through a circuit on a relay and returns the
// relay.
func relayedPair(t *testing.T, a, b host.Host) host.Host {
	t.Helper()
	relay, circuit := reserveOnNewRelay(t, b)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := a.Connect(network.WithAllowLimitedConn(ctx, "test"), peer.AddrInfo{ID: b.ID(), Addrs: []ma.Multiaddr{circuit}}); err != nil {
		t.Fatal(err)
	}
	if !Relayed(a, b.ID()) || !Relayed(b, a.ID()) {
		t.Fatal("the two are not connected through the relay")
	}
	return relay
}

// circuitsAt counts the circuit streams the relay holds open.
func circuitsAt(relay host.Host) int {
	n := 0
	for _, c := range relay.Network().Conns() {
		for _, s := range c.GetStreams() {
			if s.Protocol() == proto.ProtoIDv2Hop || s.Protocol() == proto.ProtoIDv2Stop {
				n++
			}
		}
	}
	return n
}

// Once two peers also have a direct connection (a hole punch succeeded),
// the relayed one is closed after the grace, and the relay's circuit with
// it; without a direct connection the relayed one stays.
func TestRelayedConnectionClosedOnceDirect(t *testing.T) {
	const grace = 200 * time.Millisecond
	a, b := loopbackHost(t), loopbackHost(t)
	CloseRelayedOnceDirect(a, grace, nil)
	relay := relayedPair(t, a, b)
	if n := circuitsAt(relay); n == 0 {
		t.Fatal("the relay holds no circuit for the pair")
	}

	time.Sleep(3 * grace) // well past the grace: nothing direct, so nothing closed
	if !Relayed(a, b.ID()) {
		t.Fatal("the relayed connection was closed while it was the only one")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// What a successful hole punch leaves: a direct connection beside.
	a.Peerstore().AddAddrs(b.ID(), b.Addrs(), time.Minute)
	if _, err := a.Network().DialPeer(network.WithForceDirectDial(ctx, "test"), b.ID()); err != nil {
		t.Fatal(err)
	}
	ct.Eventually(t, 10*time.Second, func() error {
		for _, c := range a.Network().ConnsToPeer(b.ID()) {
			if isCircuit(c.RemoteMultiaddr().String()) {
				return fmt.Errorf("relayed connection still open beside the direct one")
			}
		}
		if n := circuitsAt(relay); n > 0 {
			return fmt.Errorf("the relay still holds %d circuit streams", n)
		}
		return nil
	})
	if !DirectlyConnected(a, b.ID()) {
		t.Fatal("the direct connection went too")
	}
}

// A relayed session that carries nothing for the idle time is closed with
// its connection, which frees the circuit on the relay; one in use stays,
// and speaking again opens a new one.
func TestIdleRelayedSessionLetsTheCircuitGo(t *testing.T) {
	const idle = 400 * time.Millisecond
	alice, bob := newNode(t, "alice101", idle), newNode(t, "bob102")
	alice.know(bob)
	bob.know(alice)
	relay, circuit := reserveOnNewRelay(t, bob.h)
	to := alice.target(bob)
	to.Addrs = []ma.Multiaddr{circuit} // reachable only through the relay
	ctx := context.Background()
	first, err := alice.m.Send(ctx, to, text("alice101", "m0"))
	if err != nil {
		t.Fatal(err)
	}
	if !first.Relayed() {
		t.Fatal("the session is not relayed")
	}
	// In use for three idle times: the same session all along.
	for i := 1; i <= 12; i++ {
		time.Sleep(idle / 4)
		s, err := alice.m.Send(ctx, to, text("alice101", fmt.Sprintf("m%d", i)))
		if err != nil || s != first {
			t.Fatalf("message %d: a new session (%v) while the relayed one was in use", i, err)
		}
	}
	bob.rec.waitFor(t, func() bool { return len(bob.rec.payloads) == 13 })
	// Quiet: the session, the connection and the circuit go.
	ct.Eventually(t, 10*time.Second, func() error {
		if !first.Closed() {
			return fmt.Errorf("the idle session is open")
		}
		if n := len(alice.h.Network().ConnsToPeer(bob.h.ID())); n > 0 {
			return fmt.Errorf("%d connections to bob open", n)
		}
		if n := circuitsAt(relay); n > 0 {
			return fmt.Errorf("the relay holds %d circuit streams", n)
		}
		return nil
	})
	// (Over whatever connection libp2p picks: identify told alice bob's
	// own addresses meanwhile, and here they work.)
	again, err := alice.m.Send(ctx, to, text("alice101", "after a pause"))
	if err != nil || again == first {
		t.Fatalf("speaking again: %v (same session %v)", err, again == first)
	}
	bob.rec.waitFor(t, func() bool { return len(bob.rec.payloads) == 14 })
}
