package p2p

import (
	"net"
	"strconv"
	"sync"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/e2em/e2em/desktop/engine/wire"
)

// maxObservations bounds what a NATObserver remembers.
const maxObservations = 16

// NATObserver learns how this machine's NAT maps ports from the addresses
// the coordinators' relays saw its direct connections come from (libp2p's
// identify reports them). One local port seen at one public port by two
// relays is a port-keeping NAT (or none); at two ports, a random-port NAT.
// Only relays are believed: any other peer could say anything.
type NATObserver struct {
	isRelay func(peer.ID) bool

	mu   sync.Mutex
	seen map[string]observation // by transport and relay endpoint
	keys []string               // oldest first
}

type observation struct {
	transport string // "tcp" or "udp"
	local     int    // our port
	public    int    // the port the relay saw
}

// ObserveNAT starts watching h's identify exchanges with relays.
func ObserveNAT(h host.Host, isRelay func(peer.ID) bool) *NATObserver {
	o := &NATObserver{isRelay: isRelay, seen: map[string]observation{}}
	sub, err := h.EventBus().Subscribe(new(event.EvtPeerIdentificationCompleted))
	if err != nil {
		return o
	}
	go func() {
		defer sub.Close()
		for e := range sub.Out() {
			evt := e.(event.EvtPeerIdentificationCompleted)
			o.observe(evt.Peer, evt.Conn, evt.ObservedAddr)
		}
	}()
	return o
}

func (o *NATObserver) observe(p peer.ID, c network.Conn, observed ma.Multiaddr) {
	if c == nil || observed == nil || !o.isRelay(p) || isCircuit(c.RemoteMultiaddr().String()) {
		return
	}
	transport, local := portOf(c.LocalMultiaddr())
	otransport, public := portOf(observed)
	if transport == "" || transport != otransport {
		return
	}
	key := transport + " " + c.RemoteMultiaddr().String()
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.seen[key]; !ok {
		o.keys = append(o.keys, key)
		if len(o.keys) > maxObservations {
			delete(o.seen, o.keys[0])
			o.keys = o.keys[1:]
		}
	}
	o.seen[key] = observation{transport: transport, local: local, public: public}
}

// portOf is the transport ("tcp", "udp") and port of an address.
func portOf(m ma.Multiaddr) (string, int) {
	for _, proto := range []struct {
		name string
		code int
	}{{"tcp", ma.P_TCP}, {"udp", ma.P_UDP}} {
		if v, err := m.ValueForProtocol(proto.code); err == nil {
			n, err := strconv.Atoi(v)
			if err == nil {
				return proto.name, n
			}
		}
	}
	return "", 0
}

// Kind is what the observations say: random-port when one local port was
// seen at two public ports, port-keeping when at least two relays saw one
// local port at one public port, unknown before that.
func (o *NATObserver) Kind() wire.NATKind {
	o.mu.Lock()
	defer o.mu.Unlock()
	type local struct {
		transport string
		port      int
	}
	publics := map[local]map[int]int{} // public port -> how many relays saw it
	for _, obs := range o.seen {
		l := local{obs.transport, obs.local}
		if publics[l] == nil {
			publics[l] = map[int]int{}
		}
		publics[l][obs.public]++
	}
	kind := wire.NATKind_NAT_UNKNOWN
	for _, ports := range publics {
		if len(ports) > 1 {
			return wire.NATKind_NAT_RANDOM_PORT
		}
		for _, n := range ports {
			if n > 1 {
				kind = wire.NATKind_NAT_PORT_KEEPING
			}
		}
	}
	return kind
}

// publicUDP is the multiaddr /ip4/ip/udp/port, or nil.
func publicUDP(ip net.IP, port int) ma.Multiaddr {
	if ip4 := ip.To4(); ip4 != nil && port > 0 {
		m, err := ma.NewMultiaddr("/ip4/" + ip4.String() + "/udp/" + strconv.Itoa(port))
		if err == nil {
			return m
		}
	}
	return nil
}
