package p2p

import (
	"bufio"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	"google.golang.org/protobuf/proto"

	"github.com/e2em/e2em/desktop/engine/e2e"
	"github.com/e2em/e2em/desktop/engine/wire"
)

// ProtocolID is the message protocol.
const ProtocolID = protocol.ID("/e2em/msg/1.0.0")

const (
	handshakeTimeout = 10 * time.Second
	// maxBadRecords ends a session that keeps sending records that fail.
	maxBadRecords = 16
)

// Self is who this client is.
type Self struct {
	LoginID string
	Static  *ecdh.PrivateKey
}

// Verifier confirms that login's directory entry names peer p and returns
// the identity key this client trusts for login (pinned on first use). An
// error refuses the session.
type Verifier func(ctx context.Context, login string, p peer.ID) ([]byte, error)

// Handler hears what arrives on sessions.
type Handler interface {
	// Payload is a decrypted, authenticated payload from login.
	Payload(from string, p *wire.Payload, s *Session)
	// Rejected reports a record or session refused for a security reason
	// (tampered, replayed, wrong key, key changed).
	Rejected(from string, err error)
	// Presence reports the session with login that is live now, or nil
	// when the last one ended.
	Presence(login string, s *Session)
}

// Target is a peer to reach: its login id, libp2p identity, addresses
// (direct and relay circuits) and the identity key trusted for it.
type Target struct {
	LoginID  string
	PeerID   peer.ID
	Addrs    []ma.Multiaddr
	Identity []byte
}

// Messenger runs the message protocol on a host.
type Messenger struct {
	h       host.Host
	self    Self
	verify  Verifier
	handler Handler
	log     *slog.Logger

	mu       sync.Mutex
	sessions map[string]*Session
	dialing  map[string]*sync.Mutex
	peerOf   map[string]peer.ID // login → the peer its last session was with
	notifee  network.Notifiee

	hellos *helloLimiter          // bounds the sessions strangers can make us check
	direct atomic.Pointer[Direct] // nil: relay only (no candidates either way)

	relayIdle time.Duration // see closeIdleRelayed
	stop      chan struct{}
	stopOnce  sync.Once
}

// RelayIdle is how long a relayed session may carry nothing before it
// and its connection are closed (see closeIdleRelayed).
const RelayIdle = 2 * time.Minute

// NewMessenger registers the protocol handler on h.
func NewMessenger(h host.Host, self Self, verify Verifier, handler Handler, log *slog.Logger) *Messenger {
	return newMessenger(h, self, verify, handler, log, RelayIdle)
}

func newMessenger(h host.Host, self Self, verify Verifier, handler Handler, log *slog.Logger, relayIdle time.Duration) *Messenger {
	m := &Messenger{hellos: newHelloLimiter(), h: h, self: self, verify: verify, handler: handler, log: log,
		sessions: map[string]*Session{}, dialing: map[string]*sync.Mutex{}, peerOf: map[string]peer.ID{},
		relayIdle: relayIdle, stop: make(chan struct{})}
	h.SetStreamHandler(ProtocolID, m.accept)
	m.notifee = &network.NotifyBundle{DisconnectedF: func(_ network.Network, c network.Conn) { m.disconnected(c.RemotePeer()) }}
	h.Network().Notify(m.notifee)
	go m.closeIdleRelayedLoop()
	return m
}

// disconnected says goodbye for the logins on p that had no session left
// (their relayed one gave way to a direct connection, now gone too).
func (m *Messenger) disconnected(p peer.ID) {
	if len(m.h.Network().ConnsToPeer(p)) > 0 {
		return
	}
	var gone []string
	m.mu.Lock()
	for login, q := range m.peerOf {
		if q == p && m.sessions[login] == nil {
			gone = append(gone, login)
		}
	}
	m.mu.Unlock()
	for _, login := range gone {
		m.handler.Presence(login, nil)
	}
}

func (m *Messenger) closeIdleRelayedLoop() {
	tick := time.NewTicker(m.relayIdle / 4)
	defer tick.Stop()
	for {
		select {
		case <-m.stop:
			return
		case now := <-tick.C:
			m.closeIdleRelayed(now)
		}
	}
}

// closeIdleRelayed ends the relayed sessions that carried nothing for
// relayIdle, and their connections when nothing else uses them. A relayed
// connection holds a circuit on a coordinator for as long as it is open
// (libp2p closes it only at the relay's limit, hours with ours), and a
// coordinator has a few hundred; a conversation that went quiet sets up a
// new one in a few round trips when it speaks again.
func (m *Messenger) closeIdleRelayed(now time.Time) {
	m.mu.Lock()
	var idle []*Session
	for _, s := range m.sessions {
		if s.Relayed() && now.Sub(time.Unix(0, s.active.Load())) >= m.relayIdle {
			idle = append(idle, s)
		}
	}
	m.mu.Unlock()
	for _, s := range idle {
		c := s.st.Conn()
		s.Close()
		if onlyMessages(c) {
			c.Close()
			m.log.Info("idle relayed connection closed", "peer", s.peer, "relayed", c.RemoteMultiaddr().String())
		}
	}
}

// onlyMessages reports whether every open stream on c is a message session
// (or not yet named): nothing else would be cut by closing c.
func onlyMessages(c network.Conn) bool {
	for _, st := range c.GetStreams() {
		if p := st.Protocol(); p != "" && p != ProtocolID {
			return false
		}
	}
	return true
}

// Close ends every session.
func (m *Messenger) Close() {
	m.stopOnce.Do(func() { close(m.stop) })
	m.h.RemoveStreamHandler(ProtocolID)
	m.h.Network().StopNotify(m.notifee)
	m.mu.Lock()
	sessions := m.sessions
	m.sessions = map[string]*Session{}
	m.mu.Unlock()
	for _, s := range sessions {
		s.Close()
	}
}

// Send seals payload for t on an existing session or a new one (dialing
// directly first; libp2p falls back to the relay addresses among t.Addrs).
func (m *Messenger) Send(ctx context.Context, t Target, payload []byte) (*Session, error) {
	s, err := m.session(ctx, t)
	if err != nil {
		return nil, err
	}
	if err := s.Send(payload); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Session returns the live session with login, if any.
func (m *Messenger) Session(login string) *Session {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.sessions[login]
	if s != nil && s.Closed() {
		return nil
	}
	// A session on a relayed connection moves to a direct one as soon as
	// one exists (hole punching succeeded, or the peer became reachable):
	// a new stream goes on the direct connection.
	if s != nil && s.Relayed() && DirectlyConnected(m.h, s.RemotePeer()) {
		go s.Close() // and drop it, telling the handler
		return nil
	}
	return s
}

func (m *Messenger) session(ctx context.Context, t Target) (*Session, error) {
	if s := m.Session(t.LoginID); s != nil {
		return s, nil
	}
	// One dial per peer at a time.
	m.mu.Lock()
	lock, ok := m.dialing[t.LoginID]
	if !ok {
		lock = &sync.Mutex{}
		m.dialing[t.LoginID] = lock
	}
	m.mu.Unlock()
	lock.Lock()
	defer lock.Unlock()
	if s := m.Session(t.LoginID); s != nil {
		return s, nil
	}
	s, err := m.dial(ctx, t)
	if err != nil {
		return nil, err
	}
	m.keep(s)
	return s, nil
}

func (m *Messenger) dial(ctx context.Context, t Target) (*Session, error) {
	m.h.Peerstore().AddAddrs(t.PeerID, t.Addrs, peerstore.TempAddrTTL)
	ctx = network.WithAllowLimitedConn(ctx, "e2em messages")
	st, err := m.h.NewStream(ctx, t.PeerID, ProtocolID)
	if err != nil {
		return nil, fmt.Errorf("reach %s: %w", t.LoginID, err)
	}
	st.SetDeadline(time.Now().Add(handshakeTimeout))
	eph, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		st.Reset()
		return nil, err
	}
	hello := &wire.Hello{Version: e2e.Version, From: m.self.LoginID, To: t.LoginID, Ephemeral: eph.PublicKey().Bytes()}
	if err := wire.WriteFrame(st, &wire.Frame{Kind: &wire.Frame_Hello{Hello: hello}}); err != nil {
		st.Reset()
		return nil, fmt.Errorf("greet %s: %w", t.LoginID, err)
	}
	br := bufio.NewReader(st)
	f, err := wire.ReadFrame(br)
	if err != nil {
		st.Reset()
		return nil, fmt.Errorf("greet %s: %w", t.LoginID, err)
	}
	if rej := f.GetReject(); rej != nil {
		st.Reset()
		return nil, &RejectedError{Peer: t.LoginID, Reason: rej.Reason}
	}
	reply := f.GetHelloReply()
	if reply == nil {
		st.Reset()
		return nil, fmt.Errorf("greet %s: unexpected answer", t.LoginID)
	}
	me := e2e.Party{LoginID: m.self.LoginID, Identity: m.self.Static.PublicKey().Bytes()}
	them := e2e.Party{LoginID: t.LoginID, Identity: t.Identity}
	send, recv, err := e2e.SessionChains(true, m.self.Static, eph, me, them, reply.Ephemeral)
	if err != nil {
		st.Reset()
		return nil, fmt.Errorf("session with %s: %w", t.LoginID, err)
	}
	st.SetDeadline(time.Time{})
	return m.newSession(st, br, t.LoginID, send, recv)
}

// RejectedError is a peer refusing a session.
type RejectedError struct{ Peer, Reason string }

func (e *RejectedError) Error() string { return e.Peer + " refused the session: " + e.Reason }

func (m *Messenger) accept(st network.Stream) {
	st.SetDeadline(time.Now().Add(handshakeTimeout))
	br := bufio.NewReader(st)
	f, err := wire.ReadFrame(br)
	if err != nil {
		st.Reset()
		return
	}
	hello := f.GetHello()
	reject := func(from, reason string, err error) {
		wire.WriteFrame(st, &wire.Frame{Kind: &wire.Frame_Reject{Reject: &wire.Reject{Reason: reason}}})
		st.Close()
		if err != nil {
			m.handler.Rejected(from, err)
		}
	}
	if problem := helloProblem(f, m.self.LoginID); problem != "" {
		reject("", problem, nil)
		return
	}
	// Checking a claim costs a directory look-up: a peer gets a few, then
	// one every few seconds, and all peers together a bounded rate.
	if !m.hellos.allow(st.Conn().RemotePeer()) {
		reject("", "too many sessions opened; try again later", nil)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	identity, err := m.verify(ctx, hello.From, st.Conn().RemotePeer())
	cancel()
	if err != nil {
		reject(hello.From, err.Error(), fmt.Errorf("refused a session claiming to be %s: %w", hello.From, err))
		return
	}
	eph, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		st.Reset()
		return
	}
	me := e2e.Party{LoginID: m.self.LoginID, Identity: m.self.Static.PublicKey().Bytes()}
	them := e2e.Party{LoginID: hello.From, Identity: identity}
	send, recv, err := e2e.SessionChains(false, m.self.Static, eph, me, them, hello.Ephemeral)
	if err != nil {
		reject(hello.From, "bad handshake", fmt.Errorf("handshake from %s: %w", hello.From, err))
		return
	}
	if err := wire.WriteFrame(st, &wire.Frame{Kind: &wire.Frame_HelloReply{HelloReply: &wire.HelloReply{Ephemeral: eph.PublicKey().Bytes()}}}); err != nil {
		st.Reset()
		return
	}
	st.SetDeadline(time.Time{})
	s, err := m.newSession(st, br, hello.From, send, recv)
	if err != nil {
		st.Reset()
		return
	}
	m.keep(s)
}

// DirectlyConnected reports whether a direct connection to login's device
// (the one its last session was with) is open, session or not: a relayed
// session that gave way to one leaves the next session to the next record.
func (m *Messenger) DirectlyConnected(login string) bool {
	m.mu.Lock()
	p, ok := m.peerOf[login]
	m.mu.Unlock()
	return ok && DirectlyConnected(m.h, p)
}

// SetDirect turns on the end-to-end candidate exchange (and with it direct
// connections past what DCUtR reaches) for sessions from now on.
func (m *Messenger) SetDirect(d *Direct) { m.direct.Store(d) }

func (m *Messenger) keep(s *Session) {
	m.mu.Lock()
	m.sessions[s.peer] = s
	if _, ok := m.peerOf[s.peer]; ok || len(m.peerOf) < maxPeers {
		m.peerOf[s.peer] = s.RemotePeer()
	}
	m.mu.Unlock()
	m.handler.Presence(s.peer, s)
	if d := m.direct.Load(); d != nil && s.Relayed() {
		go s.sendControl(&wire.Payload{Kind: &wire.Payload_Candidates{Candidates: d.Candidates()}})
	}
}

// sendControl sends a payload of the p2p package's own (candidates,
// punches) on the session.
func (s *Session) sendControl(p *wire.Payload) error {
	p.Id = wire.NewID()
	p.From = s.m.self.LoginID
	p.SentUnixNano = time.Now().UnixNano()
	b, err := proto.Marshal(p)
	if err != nil {
		return err
	}
	return s.Send(b)
}

// control handles the p2p package's own payloads; false: not one of them.
func (s *Session) control(p *wire.Payload) bool {
	c, pu := p.GetCandidates(), p.GetPunch()
	if c == nil && pu == nil {
		return false
	}
	d := s.m.direct.Load()
	if d == nil || wire.ValidatePayload(p) != nil {
		return true // relay only, or bad: dropped
	}
	send := func(pu *wire.Punch) error {
		return s.sendControl(&wire.Payload{Kind: &wire.Payload_Punch{Punch: pu}})
	}
	if c != nil {
		d.received(s.RemotePeer(), c, send)
	} else {
		d.punched(s.RemotePeer(), pu, send)
	}
	return true
}

func (m *Messenger) drop(s *Session) {
	m.mu.Lock()
	current := m.sessions[s.peer] == s
	if current {
		delete(m.sessions, s.peer)
	}
	m.mu.Unlock()
	// A relayed session that gives way to a direct connection is no
	// goodbye: the next session takes the direct one.
	if current && !(s.Relayed() && DirectlyConnected(m.h, s.RemotePeer())) {
		m.handler.Presence(s.peer, nil)
	}
}

// Session is one authenticated, encrypted stream with a peer.
type Session struct {
	m      *Messenger
	st     network.Stream
	peer   string
	mu     sync.Mutex
	sender *e2e.Sender
	recv   *e2e.Receiver
	done   chan struct{}
	once   sync.Once
	active atomic.Int64 // when a record last went or came, in Unix nanoseconds
}

func (m *Messenger) newSession(st network.Stream, br *bufio.Reader, peerLogin string, send, recv []byte) (*Session, error) {
	snd, err := e2e.NewSender(send, time.Now(), rand.Reader)
	if err != nil {
		return nil, err
	}
	rcv, err := e2e.NewReceiver(recv)
	if err != nil {
		return nil, err
	}
	s := &Session{m: m, st: st, peer: peerLogin, sender: snd, recv: rcv, done: make(chan struct{})}
	s.active.Store(time.Now().UnixNano())
	go s.readLoop(br)
	return s, nil
}

// Peer is the login id at the other end.
func (s *Session) Peer() string { return s.peer }

// RemotePeer is the libp2p peer at the other end.
func (s *Session) RemotePeer() peer.ID { return s.st.Conn().RemotePeer() }

// Relayed reports whether this session's connection goes through a relay.
func (s *Session) Relayed() bool { return isCircuit(s.st.Conn().RemoteMultiaddr().String()) }

// RelayPeer is the relay this session's connection goes through, if any.
func (s *Session) RelayPeer() string { return RelayOf(s.st.Conn().RemoteMultiaddr().String()) }

// RelayOf is the relay's peer id in a circuit address, or "".
func RelayOf(a string) string {
	before, _, found := strings.Cut(a, "/p2p-circuit")
	if !found {
		return ""
	}
	if i := strings.LastIndex(before, "/p2p/"); i >= 0 {
		return before[i+len("/p2p/"):]
	}
	return ""
}

// Send seals and writes one payload.
func (s *Session) Send(payload []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.Closed() {
		return errors.New("session closed")
	}
	rec, err := s.sender.Seal(payload, time.Now())
	if err != nil {
		return err
	}
	s.st.SetWriteDeadline(time.Now().Add(handshakeTimeout))
	defer s.st.SetWriteDeadline(time.Time{})
	s.active.Store(time.Now().UnixNano())
	return wire.WriteFrame(s.st, &wire.Frame{Kind: &wire.Frame_Record{Record: rec}})
}

// WriteRawFrame writes a frame as is (tests use it to play an attacker
// who controls the wire).
func (s *Session) WriteRawFrame(f *wire.Frame) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return wire.WriteFrame(s.st, f)
}

// SealForTest seals a payload without sending it, for attack tests.
func (s *Session) SealForTest(payload []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sender.Seal(payload, time.Now())
}

// Close ends the session.
func (s *Session) Close() {
	s.once.Do(func() {
		close(s.done)
		s.st.Close()
		s.m.drop(s)
	})
}

// Closed reports whether the session has ended.
func (s *Session) Closed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Done is closed when the session ends.
func (s *Session) Done() <-chan struct{} { return s.done }

func (s *Session) readLoop(br *bufio.Reader) {
	defer s.Close()
	bad := 0
	for {
		f, err := wire.ReadFrame(br)
		s.active.Store(time.Now().UnixNano())
		if err != nil {
			if !s.Closed() {
				s.m.log.Debug("session ended", "peer", s.peer, "err", err)
			}
			return
		}
		rec := f.GetRecord()
		if rec == nil {
			continue
		}
		pt, err := s.recv.Open(rec)
		if err == nil {
			var p wire.Payload
			if err = proto.Unmarshal(pt, &p); err == nil {
				if p.From != s.peer {
					err = fmt.Errorf("payload claims to be from %q", p.From)
				} else if s.control(&p) {
					continue
				} else {
					s.m.handler.Payload(s.peer, &p, s)
					continue
				}
			}
		}
		bad++
		s.m.handler.Rejected(s.peer, fmt.Errorf("rejected a record from %s: %w", s.peer, err))
		if bad >= maxBadRecords {
			return
		}
	}
}
