package p2p

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/e2em/e2em/desktop/engine/wire"
)

// recorder is a Handler that keeps what it hears.
type recorder struct {
	mu       sync.Mutex
	payloads []*wire.Payload
	rejected []string
	changed  chan struct{}
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{}, 100)} }

func (r *recorder) Payload(from string, p *wire.Payload, s *Session) {
	r.mu.Lock()
	r.payloads = append(r.payloads, p)
	r.mu.Unlock()
	r.changed <- struct{}{}
}

func (r *recorder) Presence(login string, s *Session) {}

func (r *recorder) Rejected(from string, err error) {
	r.mu.Lock()
	r.rejected = append(r.rejected, err.Error())
	r.mu.Unlock()
	r.changed <- struct{}{}
}

// snapshot copies what the recorder heard, under its lock.
func (r *recorder) snapshot() ([]*wire.Payload, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*wire.Payload(nil), r.payloads...), append([]string(nil), r.rejected...)
}

func (r *recorder) waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		ok := cond()
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-r.changed:
		case <-deadline:
			t.Fatalf("condition not met: %d payloads, rejected %v", len(r.payloads), r.rejected)
		}
	}
}

type node struct {
	h     host.Host
	self  Self
	m     *Messenger
	rec   *recorder
	trust map[string][]byte  // login → identity key this node pins
	peers map[string]peer.ID // login → the peer the directory names
}

// newNode starts a client's host and messenger; relayIdle (at most one)
// replaces RelayIdle.
func newNode(t *testing.T, login string, relayIdle ...time.Duration) *node {
	key, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	h, err := NewHost(HostConfig{Key: key, Listen: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	static, _ := ecdh.X25519().GenerateKey(rand.Reader)
	n := &node{h: h, self: Self{LoginID: login, Static: static}, rec: newRecorder(), trust: map[string][]byte{}, peers: map[string]peer.ID{}}
	verify := func(ctx context.Context, l string, p peer.ID) ([]byte, error) {
		k, ok := n.trust[l]
		if !ok || n.peers[l] != p {
			return nil, fmt.Errorf("unknown peer %s", l)
		}
		return k, nil
	}
	idle := RelayIdle
	if len(relayIdle) > 0 {
		idle = relayIdle[0]
	}
	n.m = newMessenger(h, n.self, verify, n.rec, slog.New(slog.NewTextHandler(io.Discard, nil)), idle)
	t.Cleanup(n.m.Close)
	return n
}

// know makes a trust b (as the directory and pinning would).
func (a *node) know(b *node) {
	a.trust[b.self.LoginID] = b.self.Static.PublicKey().Bytes()
	a.peers[b.self.LoginID] = b.h.ID()
}

func (a *node) target(b *node) Target {
	return Target{LoginID: b.self.LoginID, PeerID: b.h.ID(), Addrs: listenAddrs(b.h), Identity: b.self.Static.PublicKey().Bytes()}
}

func text(from, body string) []byte {
	b, _ := proto.Marshal(&wire.Payload{Id: body, From: from, Kind: &wire.Payload_Text{Text: &wire.Text{Body: body}}})
	return b
}

func pair(t *testing.T) (*node, *node, *Session) {
	alice, bob := newNode(t, "alice101"), newNode(t, "bob102")
	alice.know(bob)
	bob.know(alice)
	s, err := alice.m.Send(context.Background(), alice.target(bob), text("alice101", "hello"))
	if err != nil {
		t.Fatal(err)
	}
	bob.rec.waitFor(t, func() bool { return len(bob.rec.payloads) == 1 })
	return alice, bob, s
}

func TestSessionCarriesPayloadsBothWays(t *testing.T) {
	alice, bob, _ := pair(t)
	payloads, _ := bob.rec.snapshot()
	if got := payloads[0].GetText().GetBody(); got != "hello" {
		t.Fatalf("bob got %q", got)
	}
	// Bob answers on a session of his own.
	if _, err := bob.m.Send(context.Background(), bob.target(alice), text("bob102", "hi")); err != nil {
		t.Fatal(err)
	}
	alice.rec.waitFor(t, func() bool { return len(alice.rec.payloads) == 1 })
}

// Attacks on the record layer, by someone who controls the stream: each
// record is rejected and reported, and the session goes on.
func TestRecordAttacksAreRejectedAndReported(t *testing.T) {
	_, bob, s := pair(t)
	good, err := s.SealForTest(text("alice101", "second"))
	if err != nil {
		t.Fatal(err)
	}
	send := func(rec []byte) {
		if err := s.WriteRawFrame(&wire.Frame{Kind: &wire.Frame_Record{Record: rec}}); err != nil {
			t.Fatal(err)
		}
	}
	flipped := bytes.Clone(good)
	flipped[len(flipped)/2] ^= 0x01
	send(flipped)
	send(good[:len(good)-5]) // truncated
	send(good)               // the real one
	send(good)               // replayed
	// A record under another session's keys.
	other, _, otherSession := pair(t)
	_ = other
	foreign, _ := otherSession.SealForTest(text("alice101", "foreign"))
	send(foreign)
	bob.rec.waitFor(t, func() bool { return len(bob.rec.payloads) == 2 && len(bob.rec.rejected) == 4 })
	payloads, rejected := bob.rec.snapshot()
	if got := payloads[1].GetText().GetBody(); got != "second" {
		t.Fatalf("accepted %q", got)
	}
	for _, r := range rejected {
		if !strings.Contains(r, "rejected a record from alice101") {
			t.Fatalf("report does not say what happened: %q", r)
		}
	}
	// Reordered beyond the window: hold one record back, send 300 more,
	// then the old one.
	old, _ := s.SealForTest(text("alice101", "old"))
	for i := 0; i < 300; i++ {
		if err := s.Send(text("alice101", fmt.Sprint("n", i))); err != nil {
			t.Fatal(err)
		}
	}
	send(old)
	bob.rec.waitFor(t, func() bool { return len(bob.rec.payloads) == 302 && len(bob.rec.rejected) == 5 })
	_, rejected = bob.rec.snapshot()
	if !strings.Contains(rejected[4], "replayed or too far out of order") {
		t.Fatalf("reorder report: %q", rejected[4])
	}
}

// A payload that names someone else than the session's peer is refused.
func TestPayloadMustComeFromTheSessionPeer(t *testing.T) {
	_, bob, s := pair(t)
	if err := s.Send(text("mallory", "spoof")); err != nil {
		t.Fatal(err)
	}
	bob.rec.waitFor(t, func() bool { return len(bob.rec.rejected) == 1 })
	if payloads, _ := bob.rec.snapshot(); len(payloads) != 1 {
		t.Fatal("a spoofed payload was accepted")
	}
}

// Someone whose key the receiver does not trust cannot open a session.
func TestUnknownPeerIsRefused(t *testing.T) {
	alice, bob := newNode(t, "alice101"), newNode(t, "bob102")
	alice.know(bob) // bob does not know alice
	_, err := alice.m.Send(context.Background(), alice.target(bob), text("alice101", "hello"))
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("want a refusal, got %v", err)
	}
	bob.rec.waitFor(t, func() bool { return len(bob.rec.rejected) == 1 })
}
