package p2p

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	ma "github.com/multiformats/go-multiaddr"
	"google.golang.org/protobuf/proto"

	"github.com/e2em/e2em/desktop/engine/wire"
	ct "github.com/e2em/e2em/internal/clustertest"
)

// withDirect turns on the candidate exchange for n, as a client on this
// machine (the cluster sees it at 127.0.0.1).
func withDirect(n *node, nat *NATObserver) *Direct {
	d := NewDirect(DirectConfig{Host: n.h, NAT: nat, Observed: func() net.IP { return net.IPv4(127, 0, 0, 1) }, QUICPort: QUICPort(n.h)})
	n.m.SetDirect(d)
	return d
}

// Two peers that know each other only through a relay circuit: identify
// tells neither a direct address, the candidates they send each other over
// the relayed session do, and they connect directly.
func TestCandidatesTakeARelayedSessionDirect(t *testing.T) {
	a, b := newNode(t, "ann101"), newNode(t, "bob102")
	a.know(b)
	b.know(a)
	withDirect(a, nil)
	withDirect(b, nil)
	_, circuit := reserveOnNewRelay(t, b.h)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := a.m.Send(ctx, Target{LoginID: "bob102", PeerID: b.h.ID(), Addrs: []ma.Multiaddr{circuit}, Identity: b.self.Static.PublicKey().Bytes()}, text("ann101", "hi"))
	if err != nil {
		t.Fatal(err)
	}
	if !s.Relayed() {
		t.Fatal("the first session did not go through the relay")
	}
	// Identify, which anyone who connects runs, tells only circuits.
	for _, n := range []*node{a, b} {
		for _, addr := range n.h.Addrs() {
			if !isCircuit(addr.String()) {
				t.Fatalf("identify tells peers a direct address: %s", addr)
			}
		}
	}
	b.rec.waitFor(t, func() bool { return len(b.rec.payloads) == 1 })
	ct.Eventually(t, 10*time.Second, func() error {
		if !DirectlyConnected(a.h, b.h.ID()) {
			return fmt.Errorf("not directly connected")
		}
		return nil
	})
	// The candidates were the p2p package's own: no handler saw them.
	if payloads, rejected := a.rec.snapshot(); len(payloads) != 0 || len(rejected) != 0 {
		t.Fatalf("a's handler heard %v, %v", payloads, rejected)
	}
	if payloads, _ := b.rec.snapshot(); len(payloads) != 1 {
		t.Fatalf("b's handler heard %d payloads, want the one text", len(payloads))
	}
}

// Candidates a peer sends are bounded and only dialable addresses are kept.
func TestParseCandidatesKeepsOnlyDialableAddresses(t *testing.T) {
	keep := []string{"/ip4/10.1.0.2/tcp/4001", "/ip4/127.0.0.1/udp/4001/quic-v1", "/ip6/::1/tcp/1"}
	drop := []string{"/ip4/0.0.0.0/tcp/1", "/ip4/224.0.0.1/udp/1/quic-v1", "/dns4/example.com/tcp/1", "/ip4/1.2.3.4/udp/1",
		"/ip4/1.2.3.4/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN", "/ip4/1.2.3.4/tcp/1/ws"}
	var c wire.Candidates
	for _, s := range append(append([]string{}, keep...), drop...) {
		c.Addrs = append(c.Addrs, ma.StringCast(s).Bytes())
	}
	c.Addrs = append(c.Addrs, []byte{0xff, 0x01})
	got := ParseCandidates(&c)
	if len(got) != len(keep) {
		t.Fatalf("kept %v, want %v", got, keep)
	}
	for i, m := range got {
		if m.String() != keep[i] {
			t.Fatalf("kept %s, want %s", m, keep[i])
		}
	}
}

// FuzzCandidates: whatever a peer sends, what is kept is dialable and no
// more than was sent.
func FuzzCandidates(f *testing.F) {
	for _, c := range []*wire.Candidates{
		{Addrs: [][]byte{ma.StringCast("/ip4/10.1.0.2/tcp/4001").Bytes()}, Nat: wire.NATKind_NAT_RANDOM_PORT, PublicUdp: ma.StringCast("/ip4/192.0.0.70/udp/4001").Bytes()},
		{Addrs: [][]byte{{0x04, 1, 2, 3}, ma.StringCast("/ip6/::1/udp/1/quic-v1").Bytes()}},
	} {
		b, _ := proto.Marshal(c)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var c wire.Candidates
		if proto.Unmarshal(data, &c) != nil {
			return
		}
		got := ParseCandidates(&c)
		if len(got) > len(c.Addrs) {
			t.Fatalf("%d addresses from %d", len(got), len(c.Addrs))
		}
		for _, m := range got {
			if !dialableCandidate(m) {
				t.Fatalf("kept %s", m)
			}
		}
		if u := parseUDP(c.PublicUdp); u != nil && (u.Port == 0 || u.IP.IsUnspecified()) {
			t.Fatalf("public UDP %v", u)
		}
	})
}

// FuzzProbe: a datagram is a probe for this attempt exactly when it is
// what probePacket makes of its port.
func FuzzProbe(f *testing.F) {
	nonce := bytes.Repeat([]byte{7}, wire.PunchNonceBytes)
	f.Add(probePacket(nonce, 40000))
	f.Add(probePacket(nonce, 0))
	f.Add(append(append([]byte{}, openMagic...), nonce...))
	f.Fuzz(func(t *testing.T, data []byte) {
		port, ok := parseProbe(data, nonce)
		if ok != (port != 0 && bytes.Equal(data, probePacket(nonce, port))) {
			t.Fatalf("parseProbe(%x) = %d, %v", data, port, ok)
		}
	})
}

// The NAT's kind comes from what relays saw: one local port at two public
// ports is random-port; at one public port by two relays, port-keeping.
func TestNATKindFromRelayObservations(t *testing.T) {
	for _, tc := range []struct {
		name string
		seen []observation
		want wire.NATKind
	}{
		{"nothing", nil, wire.NATKind_NAT_UNKNOWN},
		{"one relay", []observation{{"tcp", 4001, 4001}}, wire.NATKind_NAT_UNKNOWN},
		{"two agree", []observation{{"tcp", 4001, 4001}, {"tcp", 4001, 4001}}, wire.NATKind_NAT_PORT_KEEPING},
		{"kept but moved", []observation{{"udp", 4001, 5123}, {"udp", 4001, 5123}}, wire.NATKind_NAT_PORT_KEEPING},
		{"two differ", []observation{{"tcp", 4001, 31000}, {"tcp", 4001, 52007}}, wire.NATKind_NAT_RANDOM_PORT},
		{"transports apart", []observation{{"tcp", 4001, 4001}, {"udp", 4001, 4001}}, wire.NATKind_NAT_UNKNOWN},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := &NATObserver{seen: map[string]observation{}}
			for i, obs := range tc.seen {
				o.seen[string(rune('a'+i))] = obs
			}
			if got := o.Kind(); got != tc.want {
				t.Fatalf("%v: %v, want %v", tc.seen, got, tc.want)
			}
		})
	}
}
