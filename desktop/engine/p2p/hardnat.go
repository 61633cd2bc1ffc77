package p2p

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/e2em/e2em/desktop/engine/wire"
)

// Finding a random-port NAT's mapping (the technique Tailscale describes
// for "hard" NATs). Bob, behind a NAT that picks a new public port for
// every destination, cannot tell anyone where he will be; Alice, behind a
// port-keeping NAT, can: her QUIC socket's public address is in her
// candidates. Bob opens openPorts sockets and sends one packet from each
// to that address, which opens openPorts mappings on his NAT, each letting
// in packets from Alice's address only. Alice then sends probes from her
// QUIC socket to random ports of Bob's public IP, each naming the port it
// was sent to. With 256 open mappings among the 64,512 ports a NAT picks
// from, 2,048 probes miss them all with probability (1-256/64512)^2048 ≈
// 0.03%; half the time a hit comes within the first 175. The first probe to
// arrive tells Bob his public port; his socket becomes a QUIC listener
// (UDPSockets lends it to libp2p), he names the port over the session, and
// Alice dials it with QUIC from the socket the probes came from, which her
// NAT and his now let through. Both sides random-port: no probe can be
// aimed, and the pair stays on the relay.
const (
	// openPorts is how many mappings the random-port side opens.
	openPorts = 256
	// probeBudget bounds the probes of one attempt.
	probeBudget = 2048
	// probeBatch probes go out every probeEvery: 1,000 a second, about
	// 300 kbit/s for two seconds at most.
	probeBatch = 8
	probeEvery = 8 * time.Millisecond
	// openWindow is how long the opened mappings wait for a probe.
	openWindow = 6 * time.Second
	// probeGrace is how long the prober waits for FOUND after its last
	// probe (the answer crosses the relay).
	probeGrace = time.Second
	// maxPunches bounds attempts under way at once, whoever they are with;
	// a pair has one at a time.
	maxPunches = 4
	// maxLent bounds the found sockets QUIC listens on at once.
	maxLent = 8
	// lentIdle is how often a found socket is checked for connections
	// still using it, and how long it waits for the first.
	lentIdle = 15 * time.Second
)

var (
	openMagic  = []byte("e2em-open\x00")
	probeMagic = []byte("e2em-probe\x00")
)

// punchAttempt is one hard-NAT attempt with a peer.
type punchAttempt struct {
	nonce  []byte
	opener bool
	found  chan uint32   // prober: the port FOUND names
	stop   chan struct{} // opener: GIVE_UP arrived
	once   sync.Once
}

// probePacket is a probe to port for the attempt nonce.
func probePacket(nonce []byte, port uint16) []byte {
	b := make([]byte, 0, len(probeMagic)+len(nonce)+2)
	b = append(append(b, probeMagic...), nonce...)
	return binary.BigEndian.AppendUint16(b, port)
}

// parseProbe reads a probe for the attempt nonce: the port it was sent to.
func parseProbe(b, nonce []byte) (uint16, bool) {
	if len(b) != len(probeMagic)+len(nonce)+2 || !bytes.HasPrefix(b, probeMagic) || !bytes.Equal(b[len(probeMagic):len(b)-2], nonce) {
		return 0, false
	}
	port := binary.BigEndian.Uint16(b[len(b)-2:])
	return port, port != 0
}

// begin registers a for p unless p has an attempt or too many run.
func (d *Direct) begin(p peer.ID, a *punchAttempt) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.punches[p] != nil || len(d.punches) >= maxPunches {
		return false
	}
	d.punches[p] = a
	return true
}

func (d *Direct) end(p peer.ID, a *punchAttempt) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.punches[p] == a {
		delete(d.punches, p)
	}
}

// punched acts on a Punch message from p.
func (d *Direct) punched(p peer.ID, pu *wire.Punch, send func(*wire.Punch) error) {
	d.mu.Lock()
	a := d.punches[p]
	theirs, known := d.peers[p]
	d.mu.Unlock()
	switch pu.Step {
	case wire.Punch_READY:
		mine := wire.NATKind_NAT_UNKNOWN
		if d.nat != nil {
			mine = d.nat.Kind()
		}
		// READY says the sender is behind a random-port NAT (its
		// candidates may have gone before it knew). Probes go to the
		// public IP it named, at most once per punchRetry.
		if a != nil || !known || theirs.publicUDP == nil || mine == wire.NATKind_NAT_RANDOM_PORT {
			return
		}
		d.mu.Lock()
		recent := time.Since(d.lastProbe[p]) < punchRetry
		if !recent {
			d.lastProbe[p] = time.Now()
		}
		d.mu.Unlock()
		if !recent {
			go d.probe(p, pu.Nonce, theirs.publicUDP.IP, send)
		}
	case wire.Punch_FOUND:
		if a != nil && !a.opener && bytes.Equal(a.nonce, pu.Nonce) {
			select {
			case a.found <- pu.Port:
			default:
			}
		}
	case wire.Punch_GIVE_UP:
		if a != nil && a.opener && bytes.Equal(a.nonce, pu.Nonce) {
			a.once.Do(func() { close(a.stop) })
		}
	}
}

type probeHit struct {
	c    *net.UDPConn
	port uint16
}

// open is the random-port side: open mappings towards the peer's QUIC
// socket, wait for a probe, and listen with QUIC on the socket it reached.
// It reports whether a probe arrived (or no attempt can be made: do not try
// again).
func (d *Direct) open(p peer.ID, to *net.UDPAddr, send func(*wire.Punch) error) bool {
	if d.sockets == nil || DirectlyConnected(d.h, p) {
		return true
	}
	d.mu.Lock()
	full := d.lent >= maxLent
	d.mu.Unlock()
	if full {
		return true
	}
	a := &punchAttempt{nonce: make([]byte, wire.PunchNonceBytes), opener: true, stop: make(chan struct{})}
	rand.Read(a.nonce)
	if !d.begin(p, a) {
		return true // one at a time
	}
	defer d.end(p, a)
	start := time.Now()
	var socks []*net.UDPConn
	for len(socks) < openPorts {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero})
		if err != nil {
			break
		}
		socks = append(socks, c)
	}
	closeAll := func(keep *net.UDPConn) {
		for _, c := range socks {
			if c != keep {
				c.Close()
			}
		}
	}
	if len(socks) < openPorts/4 {
		closeAll(nil)
		d.log.Warn("too few sockets to find a random-port NAT's mapping", "opened", len(socks))
		return false
	}
	hello := append(append([]byte{}, openMagic...), a.nonce...)
	for i, c := range socks {
		c.WriteToUDP(hello, to)
		if i%32 == 31 {
			time.Sleep(time.Millisecond) // paced, not a burst
		}
	}
	hits := make(chan probeHit, 1)
	deadline := time.Now().Add(openWindow)
	var readers sync.WaitGroup
	for _, c := range socks {
		readers.Add(1)
		go func(c *net.UDPConn) {
			defer readers.Done()
			c.SetReadDeadline(deadline)
			buf := make([]byte, 64)
			for {
				n, from, err := c.ReadFromUDP(buf)
				if err != nil {
					return
				}
				if !from.IP.Equal(to.IP) {
					continue
				}
				if port, ok := parseProbe(buf[:n], a.nonce); ok {
					select {
					case hits <- probeHit{c, port}:
					default:
					}
					return
				}
			}
		}(c)
	}
	var hit *probeHit
	if err := send(&wire.Punch{Nonce: a.nonce, Step: wire.Punch_READY}); err == nil {
		select {
		case h := <-hits:
			hit = &h
		case <-a.stop:
		case <-time.After(openWindow):
		}
	}
	for _, c := range socks {
		c.SetReadDeadline(time.Now()) // the other readers end
	}
	readers.Wait()
	if hit == nil {
		closeAll(nil)
		d.log.Info("no probe reached this random-port NAT; staying on the relay", "peer", p)
		return false
	}
	closeAll(hit.c)
	hit.c.SetReadDeadline(time.Time{})
	local := hit.c.LocalAddr().(*net.UDPAddr).Port
	addr := ma.StringCast(fmt.Sprintf("/ip4/0.0.0.0/udp/%d/quic-v1", local))
	d.sockets.lend(hit.c)
	if err := d.h.Network().Listen(addr); err != nil {
		d.sockets.unlend(local)
		d.log.Warn("could not listen on the found port", "err", err)
		return false
	}
	d.mu.Lock()
	d.lent++
	d.mu.Unlock()
	if err := send(&wire.Punch{Nonce: a.nonce, Step: wire.Punch_FOUND, Port: uint32(hit.port)}); err != nil {
		d.log.Debug("could not name the found port", "err", err)
	}
	d.log.Info("found this random-port NAT's mapping towards a contact", "peer", p, "public_port", hit.port, "took", time.Since(start).Round(time.Millisecond))
	go d.closeWhenUnused(addr, local)
	return true
}

// closeWhenUnused closes the QUIC listener on a found socket once no
// connection uses it.
func (d *Direct) closeWhenUnused(addr ma.Multiaddr, port int) {
	for {
		time.Sleep(lentIdle)
		used := false
		for _, c := range d.h.Network().Conns() {
			if transport, local := portOf(c.LocalMultiaddr()); transport == "udp" && local == port {
				used = true
				break
			}
		}
		if !used {
			break
		}
	}
	if n, ok := d.h.Network().(interface{ ListenClose(...ma.Multiaddr) }); ok {
		n.ListenClose(addr)
	}
	d.sockets.forget(port)
	d.mu.Lock()
	d.lent--
	d.mu.Unlock()
}

// probe is the port-keeping side: probe random ports of the peer's public
// IP from QUIC's socket until the peer names the one that arrived, then
// dial it.
func (d *Direct) probe(p peer.ID, nonce []byte, ip net.IP, send func(*wire.Punch) error) {
	a := &punchAttempt{nonce: nonce, found: make(chan uint32, 1)}
	if !d.begin(p, a) {
		return
	}
	defer d.end(p, a)
	var sock net.PacketConn
	if d.sockets != nil {
		sock = d.sockets.Socket(d.quicPort)
	}
	if sock == nil {
		send(&wire.Punch{Nonce: nonce, Step: wire.Punch_GIVE_UP})
		return
	}
	start := time.Now()
	const first = 1024 // NATs pick public ports above the privileged ones
	ports := mrand.Perm(65536 - first)
	tick := time.NewTicker(probeEvery)
	defer tick.Stop()
	var port uint32
	sent := 0
probing:
	for sent < probeBudget {
		select {
		case port = <-a.found:
			break probing
		case <-tick.C:
			for k := 0; k < probeBatch && sent < probeBudget; k++ {
				dst := uint16(first + ports[sent])
				sock.WriteTo(probePacket(nonce, dst), &net.UDPAddr{IP: ip, Port: int(dst)})
				sent++
			}
		}
	}
	if port == 0 {
		select {
		case port = <-a.found:
		case <-time.After(probeGrace):
		}
	}
	if port == 0 {
		send(&wire.Punch{Nonce: nonce, Step: wire.Punch_GIVE_UP})
		d.log.Info("no probe found the contact's random-port NAT; staying on the relay", "peer", p, "probes", sent)
		return
	}
	d.log.Info("a probe found the contact's random-port NAT", "peer", p, "probes", sent, "took", time.Since(start).Round(time.Millisecond))
	found := ma.StringCast(fmt.Sprintf("/ip4/%s/udp/%d/quic-v1", ip, port))
	d.dial(p, []ma.Multiaddr{found}, "a probed port")
}
