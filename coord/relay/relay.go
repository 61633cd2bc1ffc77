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
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	"github.com/libp2p/go-libp2p/x/rate"
	ma "github.com/multiformats/go-multiaddr"
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
	// How many clients may hold a reservation, and circuits per client.
	MaxReservations int
	MaxCircuits     int
	// MaxConnsPerIP bounds connections from one IP address. libp2p's
	// default, 8, would shut out a campus or an office whose people share
	// one NAT address.
	MaxConnsPerIP int
}

// DefaultConfig sizes the relay for file transfer.
func DefaultConfig() Config {
	return Config{
		MaxDuration:     12 * time.Hour,
		MaxBytes:        16 << 30,
		MaxReservations: 1024,
		MaxCircuits:     64,
		MaxConnsPerIP:   1024,
	}
}

// resourceLimits sizes libp2p's resource manager for MaxReservations people
// online at once, each holding one connection to this coordinator. libp2p's
// defaults scale with memory: on a 24 GiB machine they allow 252 inbound
// connections in all and 79 in their handshake at once, so a coordinator
// could not hold more than about 250 people, whatever -relay-max-
// reservations said. Everything else keeps libp2p's scaled defaults.
func resourceLimits(cfg Config) rcmgr.ConcreteLimitConfig {
	base := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&base)
	auto := base.AutoScale()
	def := auto.ToPartialLimitConfig()
	raise := func(v rcmgr.LimitVal, to int) rcmgr.LimitVal {
		if v == rcmgr.Unlimited || int(v) >= to {
			return v
		}
		return rcmgr.LimitVal(to)
	}
	inbound := cfg.MaxReservations + cfg.MaxReservations/4
	partial := rcmgr.PartialLimitConfig{
		System: rcmgr.ResourceLimits{
			ConnsInbound: raise(def.System.ConnsInbound, inbound),
			Conns:        raise(def.System.Conns, inbound+int(def.System.ConnsOutbound)),
			FD:           raise(def.System.FD, inbound+int(def.System.ConnsOutbound)),
		},
		Transient: rcmgr.ResourceLimits{
			ConnsInbound: raise(def.Transient.ConnsInbound, cfg.MaxReservations/4),
			Conns:        raise(def.Transient.Conns, cfg.MaxReservations/4+int(def.Transient.ConnsOutbound)),
		},
	}
	return partial.Build(auto)
}

// connManagerWatermarks keeps libp2p's connection manager from closing
// what the resource manager admitted: by default it trims above 192
// connections, and a relay reservation is only a tag to it, so the 193rd
// person online would start dropping others' reservations.
func connManagerWatermarks(l rcmgr.ConcreteLimitConfig) (low, high int) {
	high = int(l.ToPartialLimitConfig().System.Conns)
	if high <= 0 { // unlimited
		high = 1 << 20
	}
	return high * 9 / 10, high
}

// connRateLimiter bounds how fast new connections may arrive from one
// address, in proportion to how many it may hold. libp2p's default allows
// 16 at once and then one every 5 s per IPv4 address: the seventeenth
// person behind a shared NAT (a campus, an office) who logs in within a
// minute of the others could not reach this relay (seen in
// BenchmarkHolePunchRate: a client's reservations refused, its first
// message left in the mailbox). Here a quarter of MaxConnsPerIP may arrive
// at once, refilled so that all of them can within a minute.
func connRateLimiter(maxConnsPerIP int) *rate.Limiter {
	l := rate.Limit{RPS: float64(maxConnsPerIP) / 60, Burst: max(16, maxConnsPerIP/4)}
	wide := rate.Limit{RPS: 8 * l.RPS, Burst: 8 * l.Burst}
	return &rate.Limiter{
		NetworkPrefixLimits: []rate.PrefixLimit{
			{Prefix: netip.MustParsePrefix("127.0.0.0/8")}, // zero: no limit
			{Prefix: netip.MustParsePrefix("::1/128")},
		},
		SubnetRateLimiter: rate.SubnetLimiter{
			IPv4SubnetLimits: []rate.SubnetLimit{{PrefixLength: 32, Limit: l}},
			IPv6SubnetLimits: []rate.SubnetLimit{{PrefixLength: 56, Limit: l}, {PrefixLength: 48, Limit: wide}},
			GracePeriod:      time.Minute,
		},
	}
}

// Start opens the host and its relay service.
func Start(cfg Config) (host.Host, error) {
	key, err := loadOrCreateKey(filepath.Join(cfg.Dir, "p2p.key"))
	if err != nil {
		return nil, err
	}
	res := relayv2.DefaultResources()
	res.Limit = &relayv2.RelayLimit{Duration: cfg.MaxDuration, Data: cfg.MaxBytes}
	res.MaxReservations = cfg.MaxReservations
	res.MaxCircuits = cfg.MaxCircuits
	res.BufferSize = 64 << 10
	res.MaxReservationsPerIP = cfg.MaxReservations
	res.MaxReservationsPerASN = cfg.MaxReservations
	limits := resourceLimits(cfg)
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits),
		rcmgr.WithLimitPerSubnet(
			[]rcmgr.ConnLimitPerSubnet{{PrefixLength: 32, ConnCount: cfg.MaxConnsPerIP}},
			[]rcmgr.ConnLimitPerSubnet{{PrefixLength: 56, ConnCount: cfg.MaxConnsPerIP}, {PrefixLength: 48, ConnCount: 8 * cfg.MaxConnsPerIP}},
		),
		rcmgr.WithConnRateLimiters(connRateLimiter(cfg.MaxConnsPerIP)))
	if err != nil {
		return nil, fmt.Errorf("libp2p resource manager: %w", err)
	}
	low, high := connManagerWatermarks(limits)
	cm, err := connmgr.NewConnManager(low, high)
	if err != nil {
		return nil, fmt.Errorf("libp2p connection manager: %w", err)
	}
	opts := []libp2p.Option{
		libp2p.Identity(key),
		libp2p.ResourceManager(rm),
		libp2p.ConnectionManager(cm),
		libp2p.ListenAddrStrings(cfg.ListenAddrs...),
		libp2p.EnableRelayService(relayv2.WithResources(res)),
		libp2p.ForceReachabilityPublic(),
		libp2p.EnableNATService(),
		libp2p.EnableAutoNATv2(),
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
