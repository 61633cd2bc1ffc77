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

// relayedPair connects a to b through a circuit on a relay and returns the
// relay.
func relayedPair(t *testing.T, a, b host.Host) host.Host {
	t.Helper()
	relay := loopbackHost(t, libp2p.EnableRelayService(), libp2p.ForceReachabilityPublic())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	info := peer.AddrInfo{ID: relay.ID(), Addrs: relay.Addrs()}
	// The relay service starts once the host counts itself public.
	waitFor(t, 10*time.Second, func() error {
		_, err := client.Reserve(ctx, b, info)
		return err
	})
	circuit, err := ma.NewMultiaddr(fmt.Sprintf("%s/p2p/%s/p2p-circuit", relay.Addrs()[0], relay.ID()))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Connect(network.WithAllowLimitedConn(ctx, "test"), peer.AddrInfo{ID: b.ID(), Addrs: []ma.Multiaddr{circuit}}); err != nil {
		t.Fatal(err)
	}
	if !Relayed(a, b.ID()) || !Relayed(b, a.ID()) {
		t.Fatal("the two are not connected through the relay")
	}
	return relay
}

func waitFor(t *testing.T, d time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %v", d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
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
	waitFor(t, 10*time.Second, func() error {
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
