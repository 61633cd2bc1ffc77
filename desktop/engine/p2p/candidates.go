package p2p

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"

	"github.com/e2em/e2em/desktop/engine/wire"
)

const (
	// candidateTTL is how long a peer's candidates stay in the peerstore.
	candidateTTL = 10 * time.Minute
	// candidateEvery bounds how often one peer's candidates are acted on.
	candidateEvery = 5 * time.Second
	// directDialTimeout bounds a dial to a peer's candidates.
	directDialTimeout = 5 * time.Second
	// natKnownWithin is how long a peer's candidates wait for this side's
	// NAT kind to be known.
	natKnownWithin = 5 * time.Second
	// openAttempts bounds the hard-NAT attempts for one exchange of
	// candidates.
	openAttempts = 3
)

// Direct takes relayed sessions to direct connections without anyone but
// the two people learning an address: the directory holds only relay
// circuits, identify tells no one a direct address (NewHost), and each side
// sends its candidates — interface addresses, its public address, how its
// NAT maps ports — sealed over the first session. Peers behind one NAT (or
// on one machine) then dial each other's private addresses; peers behind
// port-keeping NATs are joined by DCUtR (StartHolePunching), which the
// public candidates help; a random-port NAT facing a port-keeping one is
// found by probing (hardnat.go).
type Direct struct {
	h        host.Host
	sockets  *UDPSockets
	nat      *NATObserver
	observed func() net.IP // this client's public IP as the cluster sees it
	quicPort int           // the port of QUIC's listen socket
	log      *slog.Logger

	mu        sync.Mutex
	peers     map[peer.ID]peerCandidates
	punches   map[peer.ID]*punchAttempt
	lastProbe map[peer.ID]time.Time // when this side last probed for a peer
	lent      int                   // found sockets QUIC listens on
}

// peerCandidates is what a peer last offered.
type peerCandidates struct {
	nat       wire.NATKind
	publicUDP *net.UDPAddr
	at        time.Time
}

// DirectConfig is what NewDirect needs.
type DirectConfig struct {
	Host     host.Host
	Sockets  *UDPSockets // nil: no hard-NAT probing
	NAT      *NATObserver
	Observed func() net.IP
	QUICPort int
	Log      *slog.Logger
}

// NewDirect makes the candidate exchange and hard-NAT probing for a host.
func NewDirect(cfg DirectConfig) *Direct {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Direct{h: cfg.Host, sockets: cfg.Sockets, nat: cfg.NAT, observed: cfg.Observed, quicPort: cfg.QUICPort, log: cfg.Log,
		peers: map[peer.ID]peerCandidates{}, punches: map[peer.ID]*punchAttempt{}, lastProbe: map[peer.ID]time.Time{}}
}

// Candidates are this client's addresses for one peer: public first, then
// private, then loopback, at most wire.MaxCandidates.
func (d *Direct) Candidates() *wire.Candidates {
	var public, private, loopback [][]byte
	seen := map[string]bool{}
	add := func(a ma.Multiaddr) {
		if seen[a.String()] {
			return
		}
		seen[a.String()] = true
		switch {
		case manet.IsIPLoopback(a):
			loopback = append(loopback, a.Bytes())
		case manet.IsPublicAddr(a):
			public = append(public, a.Bytes())
		default:
			private = append(private, a.Bytes())
		}
	}
	ip := d.observed()
	for _, a := range PublicAddrs(d.h, ip) {
		add(a)
	}
	for _, a := range listenAddrs(d.h) {
		if !d.isLent(a) {
			add(a)
		}
	}
	all := append(append(public, private...), loopback...)
	c := &wire.Candidates{Addrs: all[:min(len(all), wire.MaxCandidates)]}
	if d.nat != nil {
		c.Nat = d.nat.Kind()
	}
	if m := publicUDP(ip, d.quicPort); m != nil {
		c.PublicUdp = m.Bytes()
	}
	return c
}

// isLent reports whether a is a socket found by probing (offered to no one
// else: its mapping opens only towards the peer it was found for).
func (d *Direct) isLent(a ma.Multiaddr) bool {
	transport, port := portOf(a)
	return transport == "udp" && d.sockets != nil && port != d.quicPort && d.sockets.Socket(port) != nil
}

// ParseCandidates keeps the addresses a peer offered that can be dialed:
// an IP, then TCP, or UDP with QUIC; nothing else (no circuits, names or
// peer ids), no unspecified or multicast IPs.
func ParseCandidates(c *wire.Candidates) []ma.Multiaddr {
	var out []ma.Multiaddr
	for _, b := range c.Addrs {
		m, err := ma.NewMultiaddrBytes(b)
		if err != nil || !dialableCandidate(m) {
			continue
		}
		out = append(out, m)
	}
	return out
}

func dialableCandidate(m ma.Multiaddr) bool {
	if len(m) < 2 || len(m) > 3 {
		return false
	}
	switch m[0].Protocol().Code {
	case ma.P_IP4, ma.P_IP6:
	default:
		return false
	}
	ip := net.IP(m[0].RawValue())
	if ip.IsUnspecified() || ip.IsMulticast() {
		return false
	}
	switch {
	case len(m) == 2 && m[1].Protocol().Code == ma.P_TCP:
		return true
	case len(m) == 3 && m[1].Protocol().Code == ma.P_UDP && m[2].Protocol().Code == ma.P_QUIC_V1:
		return true
	}
	return false
}

// parseUDP is /ip4/…/udp/… as a UDP address, or nil.
func parseUDP(b []byte) *net.UDPAddr {
	m, err := ma.NewMultiaddrBytes(b)
	if err != nil || len(m) != 2 || m[0].Protocol().Code != ma.P_IP4 || m[1].Protocol().Code != ma.P_UDP {
		return nil
	}
	_, port := portOf(m)
	ip := net.IP(m[0].RawValue())
	if port == 0 || ip.IsUnspecified() || ip.IsMulticast() {
		return nil
	}
	return &net.UDPAddr{IP: ip, Port: port}
}

// received acts on a peer's candidates: the peerstore learns those worth
// trying, private ones are dialed when the two share a public IP, and a
// random-port NAT facing a port-keeping one starts probing.
func (d *Direct) received(p peer.ID, c *wire.Candidates, send func(*wire.Punch) error) {
	now := time.Now()
	theirs := parseUDP(c.PublicUdp)
	d.mu.Lock()
	if last, ok := d.peers[p]; ok && now.Sub(last.at) < candidateEvery {
		d.mu.Unlock()
		return
	}
	d.peers[p] = peerCandidates{nat: c.Nat, publicUDP: theirs, at: now}
	if len(d.peers) > maxPeers {
		for q, pc := range d.peers {
			if now.Sub(pc.at) > candidateTTL {
				delete(d.peers, q)
				delete(d.lastProbe, q)
			}
		}
	}
	d.mu.Unlock()

	mine := d.observed()
	sameNAT := mine == nil || theirs == nil || mine.Equal(theirs.IP)
	var public, private []ma.Multiaddr
	for _, a := range ParseCandidates(c) {
		if manet.IsPublicAddr(a) {
			// A random-port NAT's public ports lead nowhere.
			if c.Nat != wire.NATKind_NAT_RANDOM_PORT {
				public = append(public, a)
			}
		} else if sameNAT {
			private = append(private, a)
		}
	}
	// DCUtR tries the public ones itself first (they are its "direct
	// dial" before the punch).
	d.h.Peerstore().AddAddrs(p, public, candidateTTL)
	if len(private) > 0 && !DirectlyConnected(d.h, p) {
		go d.dial(p, private, "private candidates")
	}
	if d.nat != nil && c.Nat == wire.NATKind_NAT_PORT_KEEPING && theirs != nil {
		go d.openWhileRelayed(p, theirs, send)
	}
}

// openWhileRelayed is the random-port side's attempts with a port-keeping
// peer: once this side's NAT kind is known (the relays' observations come
// within a second of log-in), then again punchRetry after a miss while the
// two are still relayed, openAttempts in all.
func (d *Direct) openWhileRelayed(p peer.ID, to *net.UDPAddr, send func(*wire.Punch) error) {
	known := time.Now().Add(natKnownWithin)
	for d.nat.Kind() == wire.NATKind_NAT_UNKNOWN && time.Now().Before(known) {
		time.Sleep(natKnownWithin / 20)
	}
	for try := 0; try < openAttempts && d.nat.Kind() == wire.NATKind_NAT_RANDOM_PORT && Relayed(d.h, p); try++ {
		if try > 0 {
			time.Sleep(punchRetry)
		}
		if d.open(p, to, send) {
			return
		}
	}
}

// dial connects to p directly at addrs.
func (d *Direct) dial(p peer.ID, addrs []ma.Multiaddr, what string) error {
	ctx, cancel := context.WithTimeout(network.WithForceDirectDial(context.Background(), "e2em "+what), directDialTimeout)
	defer cancel()
	start := time.Now()
	err := d.h.Connect(ctx, peer.AddrInfo{ID: p, Addrs: addrs})
	if err != nil {
		d.log.Debug("no direct connection", "peer", p, "via", what, "err", err)
		return err
	}
	d.log.Info("direct connection", "peer", p, "via", what, "took", time.Since(start).Round(time.Millisecond))
	return nil
}
