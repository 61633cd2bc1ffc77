// Package relay owns the coordinator's libp2p host: a stable identity kept in
// the data directory, TCP and QUIC listeners, the circuit relay v2 service
// with limits sized for file transfer, and the AutoNAT service that tells
// clients whether they are reachable.
package relay

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/e2em/e2em/internal/p2plimits"
)

// Config says where to listen and how much to relay.
type Config struct {
	Dir         string   // the key is kept in Dir/p2p.key
	ListenAddrs []string // multiaddrs, e.g. /ip4/0.0.0.0/tcp/7301
	// Announce replaces the listen addresses in what clients are told, for
	// a coordinator behind a port forward.
	Announce []string
	// Per relayed connection: how long and how many bytes each way. The
	// library's defaults (2 min, 128 KiB) would cut a file transfer.
	MaxDuration time.Duration
	MaxBytes    int64
	// How many clients may hold a reservation (0: as many as a quarter of
	// the memory and half the descriptors allow, ReservationsFor), and
	// circuits per client.
	MaxReservations int
	MaxCircuits     int
	// Metrics, when set, receives libp2p's own metrics (libp2p_swarm_*,
	// libp2p_relaysvc_*: reservations and circuits opened and closed).
	Metrics prometheus.Registerer
	// Circuits is how many relayed connections the relay carries at once,
	// in all; 0 leaves libp2p's size, which follows the machine's memory
	// (about 500 circuits on a 24 GiB machine). Each circuit reserves two
	// copy buffers (bufferSize).
	Circuits int
	// MaxConnsPerIP bounds connections from one IP address. libp2p's
	// default, 8, would shut out a campus or an office whose people share
	// one NAT address.
	MaxConnsPerIP int
	// MaxReservationsPerIP bounds reservations from one IP address, well
	// below MaxReservations so that one host cannot take them all.
	MaxReservationsPerIP int
	// Admit, when set, decides which peers may reserve a slot and open
	// circuits: the coordinator admits the devices people published in
	// the directory, so the relay is no open proxy. Nil admits anyone.
	Admit *ACL
}

// ACL admits the peers its check accepts. The check is set once the
// coordinator's state is open (the relay starts first); until then
// nobody is admitted and clients try again.
type ACL struct {
	check atomic.Pointer[func(peer.ID) bool]
}

// SetCheck installs the admission test.
func (a *ACL) SetCheck(f func(peer.ID) bool) { a.check.Store(&f) }

func (a *ACL) admits(p peer.ID) bool {
	f := a.check.Load()
	return f != nil && (*f)(p)
}

// AllowReserve implements relayv2.ACLFilter: only published devices hold
// a slot.
func (a *ACL) AllowReserve(p peer.ID, _ ma.Multiaddr) bool { return a.admits(p) }

// AllowConnect implements relayv2.ACLFilter: circuits run between
// published devices only.
func (a *ACL) AllowConnect(src peer.ID, _ ma.Multiaddr, dest peer.ID) bool {
	return a.admits(src) && a.admits(dest)
}

// bufferSize is each direction's copy buffer of a circuit: libp2p's 2 KiB
// would cost a system call per 2 KiB of a relayed file.
const bufferSize = 64 << 10

// DefaultConfig sizes the relay for file transfer.
func DefaultConfig() Config {
	return Config{
		MaxDuration:     12 * time.Hour,
		MaxBytes:        16 << 30,
		MaxReservations: 0, // sized from memory and descriptors at Start
		MaxCircuits:     64,
		Circuits:        1024,
		MaxConnsPerIP:   1024,
		// A NAT'd office shares an address; a single host cannot take the
		// relay.
		MaxReservationsPerIP: 128,
	}
}

// Start opens the host and its relay service.
func Start(cfg Config) (host.Host, error) {
	key, err := loadOrCreateKey(filepath.Join(cfg.Dir, "p2p.key"))
	if err != nil {
		return nil, err
	}
	if cfg.MaxReservations <= 0 {
		cfg.MaxReservations = ReservationsFor(MemoryLimit(), FileLimit())
	}
	res := relayv2.DefaultResources()
	res.Limit = &relayv2.RelayLimit{Duration: cfg.MaxDuration, Data: cfg.MaxBytes}
	res.MaxReservations = cfg.MaxReservations
	res.MaxCircuits = cfg.MaxCircuits
	res.BufferSize = bufferSize
	res.MaxReservationsPerIP = cfg.MaxReservationsPerIP
	if res.MaxReservationsPerIP <= 0 || res.MaxReservationsPerIP > cfg.MaxReservations {
		res.MaxReservationsPerIP = cfg.MaxReservations
	}
	res.MaxReservationsPerASN = cfg.MaxReservations
	rm, cm, err := p2plimits.NewForRelay(cfg.MaxReservations, cfg.MaxConnsPerIP,
		p2plimits.Relay{Circuits: cfg.Circuits, MemoryPerCircuit: 2 * bufferSize})
	if err != nil {
		return nil, err
	}
	opts := []libp2p.Option{
		libp2p.Identity(key),
		libp2p.ResourceManager(rm),
		libp2p.ConnectionManager(cm),
		libp2p.ListenAddrStrings(cfg.ListenAddrs...),
		libp2p.EnableRelayService(relayOptions(res, cfg.Admit)...),
		libp2p.ForceReachabilityPublic(),
		libp2p.EnableNATService(),
		libp2p.EnableAutoNATv2(),
	}
	if cfg.Metrics != nil {
		opts = append(opts, libp2p.PrometheusRegisterer(cfg.Metrics))
	}
	if len(cfg.Announce) > 0 {
		announce := make([]ma.Multiaddr, 0, len(cfg.Announce))
		for _, a := range cfg.Announce {
			m, err := ma.NewMultiaddr(a)
			if err != nil {
				return nil, fmt.Errorf("announce address %q: %w", a, err)
			}
			announce = append(announce, m)
		}
		opts = append(opts, libp2p.AddrsFactory(func([]ma.Multiaddr) []ma.Multiaddr { return announce }))
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		rm.Close()
		cm.Close()
		return nil, fmt.Errorf("start libp2p host: %w", err)
	}
	return h, nil
}

// Addrs are the host's addresses with its peer id appended, as clients dial
// them to reserve a slot.
func Addrs(h host.Host) []string {
	var out []string
	for _, a := range h.Addrs() {
		out = append(out, a.String()+"/p2p/"+h.ID().String())
	}
	return out
}

func loadOrCreateKey(path string) (crypto.PrivKey, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		k, err := crypto.UnmarshalPrivateKey(b)
		if err != nil {
			return nil, fmt.Errorf("read libp2p key %s: %w", path, err)
		}
		return k, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return nil, err
	}
	b, err = crypto.MarshalPrivateKey(k)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(path+".tmp", b, 0o600); err != nil {
		return nil, err
	}
	return k, os.Rename(path+".tmp", path)
}

func relayOptions(res relayv2.Resources, acl *ACL) []relayv2.Option {
	opts := []relayv2.Option{relayv2.WithResources(res)}
	if acl != nil {
		opts = append(opts, relayv2.WithACL(acl))
	}
	return opts
}
