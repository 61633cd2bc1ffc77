// Package p2p owns a client's libp2p side: the host (TCP and QUIC, hole
// punching, reservations on the coordinators' circuit relays), dialing a
// contact directly first and through a relay second, and the /e2em/msg
// protocol: an authenticated ephemeral handshake per stream, then sealed
// records both ways. It knows nothing of the coordinators' API or the
// mailbox; the engine decides what to do when a peer cannot be reached.
package p2p

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	pbv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/pb"
	"github.com/libp2p/go-libp2p/p2p/protocol/holepunch"
	"github.com/libp2p/go-libp2p/p2p/protocol/identify"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"

	"github.com/e2em/e2em/internal/p2plimits"
)

// HostConfig says how to start the host.
type HostConfig struct {
	Key    crypto.PrivKey
	Port   int    // TCP and UDP (QUIC) port; 0 picks any
	Listen string // IP to listen on; default 0.0.0.0
	// RelayOnly sends no address candidates and dials no one directly.
	RelayOnly bool
	// Sockets, when set, opens QUIC's UDP sockets (for hard-NAT probing).
	Sockets *UDPSockets
	Log     *slog.Logger
}

// maxPeers is how many others a client may hold connections with at once.
const maxPeers = 1024

// NewHost starts a libp2p host for a client.
func NewHost(cfg HostConfig) (host.Host, error) {
	ip := cfg.Listen
	if ip == "" {
		ip = "0.0.0.0"
	}
	opts := []libp2p.Option{
		libp2p.Identity(cfg.Key),
		libp2p.ListenAddrStrings(
			fmt.Sprintf("/ip4/%s/tcp/%d", ip, cfg.Port),
			fmt.Sprintf("/ip4/%s/udp/%d/quic-v1", ip, cfg.Port),
		),
		// Hole punching is started by StartHolePunching, with addresses
		// the engine knows from the cluster (see there).
		libp2p.EnableRelay(),
		libp2p.SwarmOpts(swarm.WithDialRanker(tcpFirstRanker)),
	}
	// Identify tells whoever connects (anyone can, through a relay) no
	// direct address: candidates go only to the people this client talks
	// with, end to end (see candidates.go).
	opts = append(opts, libp2p.AddrsFactory(func(addrs []ma.Multiaddr) []ma.Multiaddr {
		var out []ma.Multiaddr
		for _, a := range addrs {
			if isCircuit(a.String()) {
				out = append(out, a)
			}
		}
		return out
	}))
	if cfg.Sockets != nil {
		opts = append(opts, cfg.Sockets.quicReuse())
	}
	// A client in a class-sized group may hold a session with every
	// member at once, and classmates behind one NAT share its address.
	rm, cm, err := p2plimits.New(maxPeers, maxPeers)
	if err != nil {
		return nil, err
	}
	opts = append(opts, libp2p.ResourceManager(rm), libp2p.ConnectionManager(cm))
	h, err := libp2p.New(opts...)
	if err != nil {
		rm.Close()
		cm.Close()
		return nil, fmt.Errorf("start libp2p on port %d: %w", cfg.Port, err)
	}
	CloseRelayedOnceDirect(h, relayGrace, cfg.Log)
	return h, nil
}

// relayGrace is how long a relayed connection outlives a direct one to the
// same peer: long enough for what is under way on it (a hole punch's last
// messages, a record in flight) to end.
const relayGrace = 5 * time.Second

// CloseRelayedOnceDirect makes h close its relayed connections to a peer
// grace after it has a direct one too. libp2p keeps both (and sends new
// streams on the direct one), but a relayed connection holds a circuit on
// the coordinator — two streams and buffers of the relay service, of which
// a coordinator has a few hundred — until its time limit, hours with
// ours: every pair that hole-punched would keep one for nothing, and the
// relay would refuse the next people who need it. A message that was on
// the closed connection is sent again on the direct one (it had no
// acknowledgement), and shown once.
func CloseRelayedOnceDirect(h host.Host, grace time.Duration, log *slog.Logger) {
	if log == nil {
		log = slog.Default()
	}
	check := func(p peer.ID) {
		if !DirectlyConnected(h, p) {
			return
		}
		for _, c := range h.Network().ConnsToPeer(p) {
			if isCircuit(c.RemoteMultiaddr().String()) {
				c.Close()
				log.Info("relayed connection closed: a direct one is open", "peer", p, "relayed", c.RemoteMultiaddr().String())
			}
		}
	}
	h.Network().Notify(&network.NotifyBundle{ConnectedF: func(_ network.Network, c network.Conn) {
		p := c.RemotePeer()
		time.AfterFunc(grace, func() { check(p) })
	}})
}

// StartHolePunching runs DCUtR (libp2p's direct connection upgrade
// through a relay) on h. libp2p's own set-up only starts once identify has
// told the host a public address, and then only punches for relayed
// connections that arrive later: a message that arrives through a relay in
// the first moments after log-in would stay relayed for good. Here the
// public addresses come from the start: the host's own public addresses,
// and its listen ports on the public IP the cluster saw it connect from
// (right for NATs that keep ports; no worse than nothing for the others).
// A punch that fails is tried again (see HolePuncher).
func StartHolePunching(h host.Host, observedIP func() net.IP, log *slog.Logger) (*HolePuncher, error) {
	idh, ok := h.(interface{ IDService() identify.IDService })
	if !ok {
		return nil, fmt.Errorf("host %T has no identify service", h)
	}
	public := func() []ma.Multiaddr { return PublicAddrs(h, observedIP()) }
	var started atomic.Pointer[HolePuncher]
	// libp2p's own punch can report success and still leave no direct
	// connection (the new one closed at once): check, and punch again.
	tracer := punchTracer(func(p peer.ID) {
		time.AfterFunc(punchSettle, func() {
			if hp := started.Load(); hp != nil && !DirectlyConnected(h, p) {
				hp.TryNow(p)
			}
		})
	})
	svc, err := holepunch.NewService(h, idh.IDService(), public, holepunch.WithTracer(tracer))
	if err != nil {
		return nil, err
	}
	ready := func() bool { return slices.Contains(h.Mux().Protocols(), holepunch.Protocol) }
	relayedIn := func() map[peer.ID]time.Time { return relayedInbound(h) }
	direct := func(p peer.ID) bool { return DirectlyConnected(h, p) }
	hp := newHolePuncher(svc.DirectConnect, ready, relayedIn, direct, svc.Close, log)
	started.Store(hp)
	ticker := time.NewTicker(punchCheck)
	go func() {
		defer ticker.Stop()
		hp.run(ticker.C)
	}()
	return hp, nil
}

// punchTracer hears libp2p's hole punches end.
type punchTracer func(peer.ID)

func (t punchTracer) Trace(evt *holepunch.Event) {
	if end, ok := evt.Evt.(*holepunch.EndHolePunchEvt); ok && end.Success {
		t(evt.Remote)
	}
}

const (
	// punchRetry is how long a relayed connection is left to libp2p's own
	// hole punch before this side tries again, timed from that
	// connection's own start, and then the time between attempts.
	punchRetry = 10 * time.Second
	// punchCheck is how often the retry times are looked at.
	punchCheck = time.Second
	// punchSettle is how long after a punch libp2p calls successful the
	// direct connection must still be there.
	punchSettle = 250 * time.Millisecond
	// punchAgain bounds the punches tried at once after one that
	// "succeeded" without a direct connection.
	punchAgain = 2
)

// HolePuncher is the DCUtR service and what tries it again. libp2p punches
// once per relayed connection, when it opens; an attempt that fails (the
// other side's service not started yet, a lost packet, a slow machine)
// would leave the two relayed for as long as the connection lasts. DCUtR
// lets only the side that accepted the relayed connection start a punch,
// so that side tries again for each peer it reaches only through relays:
// punchRetry after that relayed connection opened, then every punchRetry;
// and at once when a punch reported success but left no direct connection.
type HolePuncher struct {
	punch     func(peer.ID) error          // a DCUtR exchange and simultaneous connect
	ready     func() bool                  // the service has public addresses and runs
	relayedIn func() map[peer.ID]time.Time // peers reached only through relays we accepted, and since when
	direct    func(peer.ID) bool           // a direct connection to the peer is open
	stop      func() error
	log       *slog.Logger

	mu      sync.Mutex
	last    map[peer.ID]time.Time // when this side last tried
	running map[peer.ID]bool      // one attempt per peer at once
	now     chan peer.ID          // TryNow

	done      chan struct{}
	finished  chan struct{}
	attempts  sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

func newHolePuncher(punch func(peer.ID) error, ready func() bool, relayedIn func() map[peer.ID]time.Time, direct func(peer.ID) bool, stop func() error, log *slog.Logger) *HolePuncher {
	if log == nil {
		log = slog.Default()
	}
	return &HolePuncher{punch: punch, ready: ready, relayedIn: relayedIn, direct: direct, stop: stop, log: log,
		last: map[peer.ID]time.Time{}, running: map[peer.ID]bool{}, now: make(chan peer.ID, 16),
		done: make(chan struct{}), finished: make(chan struct{})}
}

// TryNow asks for a punch to p at once (if p is still reached only
// through a relay this side accepted).
func (hp *HolePuncher) TryNow(p peer.ID) {
	select {
	case hp.now <- p:
	default:
	}
}

// run tries again as each relayed connection's time comes, until Close.
func (hp *HolePuncher) run(tick <-chan time.Time) {
	defer close(hp.finished)
	for {
		var now time.Time
		var urgent peer.ID
		select {
		case <-hp.done:
			return
		case now = <-tick:
		case urgent = <-hp.now:
			now = time.Now()
		}
		if !hp.ready() {
			continue
		}
		relayed := hp.relayedIn()
		hp.mu.Lock()
		for p := range hp.last {
			if _, ok := relayed[p]; !ok {
				delete(hp.last, p) // direct now, or gone
			}
		}
		hp.mu.Unlock()
		for p, since := range relayed {
			hp.mu.Lock()
			due := since
			if last, ok := hp.last[p]; ok && last.After(due) {
				due = last
			}
			busy := hp.running[p]
			if busy || (p != urgent && now.Sub(due) < punchRetry) {
				hp.mu.Unlock()
				continue
			}
			hp.last[p] = now
			hp.running[p] = true
			hp.mu.Unlock()
			hp.attempts.Add(1)
			go hp.attempt(p)
		}
	}
}

// attempt punches to p; a punch that reports success without leaving a
// direct connection is tried again at once, a bounded number of times.
func (hp *HolePuncher) attempt(p peer.ID) {
	defer hp.attempts.Done()
	defer func() {
		hp.mu.Lock()
		delete(hp.running, p)
		hp.mu.Unlock()
	}()
	for try := 0; try <= punchAgain; try++ {
		// libp2p refuses a second attempt while one runs.
		if err := hp.punch(p); err != nil {
			hp.log.Debug("hole punch tried again; still relayed", "peer", p, "err", err)
			return
		}
		if hp.direct(p) {
			hp.log.Info("direct connection after another hole punch", "peer", p)
			return
		}
		hp.log.Info("a hole punch succeeded but left no direct connection; punching again", "peer", p)
	}
}

// Close stops trying, stops the service and waits for attempts under way.
func (hp *HolePuncher) Close() error {
	hp.closeOnce.Do(func() {
		close(hp.done)
		<-hp.finished
		hp.closeErr = hp.stop()
		hp.attempts.Wait()
	})
	return hp.closeErr
}

// relayedInbound lists the peers h reaches only through relayed
// connections, with when the oldest one it accepted opened.
func relayedInbound(h host.Host) map[peer.ID]time.Time {
	out := map[peer.ID]time.Time{}
	for _, p := range h.Network().Peers() {
		if !Relayed(h, p) {
			continue
		}
		for _, c := range h.Network().ConnsToPeer(p) {
			st := c.Stat()
			if st.Direction != network.DirInbound {
				continue
			}
			if since, ok := out[p]; !ok || st.Opened.Before(since) {
				out[p] = st.Opened
			}
		}
	}
	return out
}

// PublicAddrs are h's public listen addresses, plus its listen ports on
// observed (when that is a public IP).
func PublicAddrs(h host.Host, observed net.IP) []ma.Multiaddr {
	var out []ma.Multiaddr
	seen := map[string]bool{}
	add := func(m ma.Multiaddr) {
		if m != nil && manet.IsPublicAddr(m) && !seen[m.String()] {
			seen[m.String()] = true
			out = append(out, m)
		}
	}
	for _, a := range listenAddrs(h) {
		add(a)
		if observed == nil || observed.To4() == nil {
			continue
		}
		if first, rest := ma.SplitFirst(a); first != nil && first.Protocol().Code == ma.P_IP4 {
			ip, err := ma.NewComponent("ip4", observed.String())
			if err == nil {
				add(ma.Multiaddr{*ip}.Encapsulate(rest))
			}
		}
	}
	return out
}

// Relays keeps reservations on a few of the coordinators' relays and
// refreshes them before they expire, so people who cannot be dialed
// directly can still be reached through a circuit. Which few is a stable
// choice (rendezvous hashing of this peer's id with each relay's): people
// spread evenly over the relays, adding relays adds room, and a relay's
// loss moves only the people it held, to their next choice, at once.
type Relays struct {
	h    host.Host
	want int
	log  *slog.Logger

	mu       sync.Mutex
	relays   []peer.AddrInfo
	reserved map[peer.ID]time.Time
	failed   map[peer.ID]relayRest // relays that could not be reached, resting
	changed  chan struct{}
	wake     chan struct{} // SetRelays, a relay lost: reserve now
}

// relayRest is how long a relay that could not be reached is passed over
// (a dead one would cost a dial timeout before the next choice each
// time): 1 s after the first failure, doubling up to maxRelayRest, each
// with ±25 % jitter so that a crowd whose relays all restarted (a cluster
// restart) neither waits long nor comes back at one instant.
type relayRest struct {
	until time.Time
	next  time.Duration
}

const maxRelayRest = 30 * time.Second

// rested is r after one more failure at now.
func (r relayRest) rested(now time.Time) relayRest {
	d := max(r.next, time.Second)
	jittered := d*3/4 + time.Duration(mrand.Int64N(int64(d)/2+1))
	return relayRest{until: now.Add(jittered), next: min(2*d, maxRelayRest)}
}

// RelaysPerPeer is how many relays a client holds reservations on: one
// may die and the client stays reachable while it moves to another.
const RelaysPerPeer = 2

// NewRelays starts keeping reservations on want of relays (all of them if
// want is 0) until ctx ends.
func NewRelays(ctx context.Context, h host.Host, relays []peer.AddrInfo, want int, log *slog.Logger) *Relays {
	if log == nil {
		log = slog.Default()
	}
	r := &Relays{h: h, want: want, log: log, relays: relays, reserved: map[peer.ID]time.Time{}, failed: map[peer.ID]relayRest{}, changed: make(chan struct{}, 1), wake: make(chan struct{}, 1)}
	// A relay that goes away is replaced within seconds, not at the next
	// refresh.
	h.Network().Notify(&network.NotifyBundle{DisconnectedF: func(_ network.Network, c network.Conn) {
		r.mu.Lock()
		_, held := r.reserved[c.RemotePeer()]
		r.mu.Unlock()
		if held && h.Network().Connectedness(c.RemotePeer()) != network.Connected {
			r.poke()
		}
	}})
	go r.run(ctx)
	return r
}

// Changed is signalled when the set of reservations changes.
func (r *Relays) Changed() <-chan struct{} { return r.changed }

// SetRelays replaces the relays to reserve on (the cluster changed, or the
// keys are published and the relays will admit this peer) and reserves at
// once.
func (r *Relays) SetRelays(relays []peer.AddrInfo) {
	r.mu.Lock()
	r.relays = relays
	r.mu.Unlock()
	r.poke()
}

func (r *Relays) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *Relays) run(ctx context.Context) {
	for {
		next := r.reserveAll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-time.After(next):
		case <-r.wake:
		}
	}
}

// RankRelays orders relays for peer self, first choice first: by
// SHA-256(self ‖ relay), the same order on every machine and at every
// log-in, and independent for each person.
func RankRelays(self peer.ID, relays []peer.AddrInfo) []peer.AddrInfo {
	type scored struct {
		ai    peer.AddrInfo
		score [32]byte
	}
	s := make([]scored, 0, len(relays))
	for _, ai := range relays {
		s = append(s, scored{ai, sha256.Sum256([]byte(string(self) + string(ai.ID)))})
	}
	slices.SortStableFunc(s, func(a, b scored) int { return bytes.Compare(a.score[:], b.score[:]) })
	out := make([]peer.AddrInfo, len(s))
	for i := range s {
		out[i] = s[i].ai
	}
	return out
}

// reserveAll holds reservations on the first want relays in this peer's
// order that grant one (refreshing those near expiry), lets go of the
// others, and says when to look again.
func (r *Relays) reserveAll(ctx context.Context) time.Duration {
	r.mu.Lock()
	ranked := RankRelays(r.h.ID(), r.relays)
	want := r.want
	r.mu.Unlock()
	if want <= 0 || want > len(ranked) {
		want = len(ranked)
	}
	wait := time.Minute
	changed := false
	have := 0
	for _, ai := range ranked {
		r.mu.Lock()
		exp, ok := r.reserved[ai.ID]
		r.mu.Unlock()
		if have >= want {
			if ok { // a better choice is back: this one's people move
				r.mu.Lock()
				delete(r.reserved, ai.ID)
				r.mu.Unlock()
				changed = true
			}
			continue
		}
		if ok && time.Until(exp) > 2*time.Minute && r.h.Network().Connectedness(ai.ID) == network.Connected {
			have++
			continue
		}
		r.mu.Lock()
		rest := time.Until(r.failed[ai.ID].until)
		r.mu.Unlock()
		if rest > 0 && !ok {
			wait = min(wait, rest)
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		res, err := client.Reserve(cctx, r.h, ai)
		cancel()
		r.mu.Lock()
		if err != nil {
			if ok {
				delete(r.reserved, ai.ID)
				changed = true
			}
			// An unreachable relay rests; one that answered (not yet
			// admitted, full) is asked again soon.
			var answered client.ReservationError
			if !errors.As(err, &answered) || answered.Status == pbv2.Status_CONNECTION_FAILED {
				r.failed[ai.ID] = r.failed[ai.ID].rested(time.Now())
			}
			r.log.Debug("relay reservation failed", "relay", ai.ID, "err", err)
			wait = 2 * time.Second
		} else {
			if !ok {
				changed = true
			}
			delete(r.failed, ai.ID)
			r.reserved[ai.ID] = res.Expiration
			have++
		}
		r.mu.Unlock()
	}
	if changed {
		select {
		case r.changed <- struct{}{}:
		default:
		}
	}
	return wait
}

// CircuitAddrs are the addresses through which this host is reachable via
// the relays it holds reservations on.
func (r *Relays) CircuitAddrs() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, ai := range r.relays {
		if _, ok := r.reserved[ai.ID]; !ok {
			continue
		}
		for _, a := range ai.Addrs {
			out = append(out, fmt.Sprintf("%s/p2p/%s/p2p-circuit/p2p/%s", a, ai.ID, r.h.ID()))
		}
	}
	return out
}

// IsRelay reports whether p is one of the relays.
func (r *Relays) IsRelay(p peer.ID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ai := range r.relays {
		if ai.ID == p {
			return true
		}
	}
	return false
}

// QUICPort is the port h's QUIC listens on, or 0.
func QUICPort(h host.Host) int {
	for _, a := range h.Network().ListenAddresses() {
		if transport, port := portOf(a); transport == "udp" && isQUIC(a) {
			return port
		}
	}
	return 0
}

// Reserved is how many relays hold a reservation for this host.
func (r *Relays) Reserved() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.reserved)
}

// ParseAddrInfo turns multiaddr strings ending in /p2p/<id> into AddrInfos.
func ParseAddrInfo(addrs []string) ([]peer.AddrInfo, error) {
	var mas []ma.Multiaddr
	for _, a := range addrs {
		m, err := ma.NewMultiaddr(a)
		if err != nil {
			return nil, fmt.Errorf("address %q: %w", a, err)
		}
		mas = append(mas, m)
	}
	return peer.AddrInfosFromP2pAddrs(mas...)
}

// ListenAddrs are the host's own addresses as strings (without /p2p).
func ListenAddrs(h host.Host) []string {
	var out []string
	for _, a := range listenAddrs(h) {
		out = append(out, a.String())
	}
	return out
}

// listenAddrs are the host's direct addresses on its interfaces (h.Addrs
// holds only circuits: see NewHost).
func listenAddrs(h host.Host) []ma.Multiaddr {
	all, err := h.Network().InterfaceListenAddresses()
	if err != nil {
		return nil
	}
	var out []ma.Multiaddr
	for _, a := range all {
		if !isCircuit(a.String()) {
			out = append(out, a)
		}
	}
	return out
}

func isCircuit(a string) bool { return strings.Contains(a, "/p2p-circuit") }

// Relayed reports whether every open connection to p goes through a relay.
func Relayed(h host.Host, p peer.ID) bool {
	return len(h.Network().ConnsToPeer(p)) > 0 && !DirectlyConnected(h, p)
}

// DirectlyConnected reports whether some open connection to p is direct.
func DirectlyConnected(h host.Host, p peer.ID) bool {
	for _, c := range h.Network().ConnsToPeer(p) {
		if !isCircuit(c.RemoteMultiaddr().String()) {
			return true
		}
	}
	return false
}
