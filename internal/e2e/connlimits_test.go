package e2e

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/e2em/e2em/coord/api"
	ct "github.com/e2em/e2em/internal/clustertest"
)

// tcpInfo is a peer's id and its loopback TCP addresses.
func tcpInfo(t *testing.T, id string, addrs []string) peer.AddrInfo {
	t.Helper()
	info := peer.AddrInfo{}
	var err error
	if info.ID, err = peer.Decode(id); err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if strings.HasPrefix(a, "/ip4/127.0.0.1/tcp/") && !strings.Contains(a, "p2p-circuit") {
			m, err := ma.NewMultiaddr(strings.TrimSuffix(a, "/p2p/"+id))
			if err != nil {
				t.Fatal(err)
			}
			info.Addrs = append(info.Addrs, m)
		}
	}
	if len(info.Addrs) == 0 {
		t.Fatalf("no loopback TCP address among %v", addrs)
	}
	return info
}

// crowd connects n fresh libp2p peers to target, 32 at a time, each
// running then(h) once connected; it fails the test unless all succeed.
func crowd(t *testing.T, target peer.AddrInfo, n int, then func(context.Context, host.Host) error) {
	t.Helper()
	var ok atomic.Int32
	var firstErr atomic.Value
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			h, err := libp2p.New(libp2p.NoListenAddrs, libp2p.Transport(tcp.NewTCPTransport),
				libp2p.ResourceManager(&network.NullResourceManager{}), libp2p.DisableRelay())
			if err != nil {
				firstErr.CompareAndSwap(nil, err.Error())
				return
			}
			t.Cleanup(func() { h.Close() })
			cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err = h.Connect(cctx, target)
			if err == nil && then != nil {
				err = then(cctx, h)
			}
			if err != nil {
				firstErr.CompareAndSwap(nil, err.Error())
				return
			}
			ok.Add(1)
		}()
	}
	wg.Wait()
	if int(ok.Load()) != n {
		t.Fatalf("%d of %d peers got through; first refusal: %v", ok.Load(), n, firstErr.Load())
	}
}

// soleRelay starts a one-coordinator cluster and returns its relay.
func soleRelay(t *testing.T) peer.AddrInfo {
	// Anonymous peers test the relay's capacity and other libp2p
	// implementations: this relay admits anyone (TestRelayAdmitsOnlyPublishedPeers
	// shows the default).
	c := ct.Start(t, ct.Options{N: 1, CoordArgs: []string{"-relay-open", "-relay-max-reservations-per-ip", "1024"}})
	relays, err := c.LB().Relays(ctx(t), &api.RelaysRequest{})
	if err != nil || len(relays.Relays) == 0 {
		t.Fatalf("relays: %v %v", relays, err)
	}
	r := relays.Relays[0]
	return tcpInfo(t, r.PeerId, r.Addrs)
}

// One coordinator holds a relay reservation for each of 400 people online
// at once (libp2p's memory-scaled defaults stopped at 252 inbound
// connections on this machine).
func TestRelayHoldsHundredsOfReservations(t *testing.T) {
	info := soleRelay(t)
	crowd(t, info, 400, func(ctx context.Context, h host.Host) error {
		_, err := client.Reserve(ctx, h, info)
		return err
	})
}

// A person in a class-sized group takes sessions from 400 classmates at
// once (the same libp2p defaults refused the 253rd).
func TestClientTakesConnectionsFromAWholeClass(t *testing.T) {
	c := sharedCluster(t)
	port := freePort(t)
	cl := c.StartClient(t, "kim781", ct.ClientOptions{Args: []string{"-port", fmt.Sprint(port)}})
	cl.Do("Sign up kim 781 password123")
	cl.Do("Login kim781 password123")
	lb := c.LB()
	if _, err := lb.SignUp(ctx(t), &api.SignUpRequest{Username: "lee", RollNumber: "782", Password: "password123"}); err != nil {
		t.Fatal(err)
	}
	resp, err := lb.LogIn(ctx(t), &api.LogInRequest{LoginId: "lee782", Password: "password123"})
	if err != nil {
		t.Fatal(err)
	}
	found, err := lb.LookUp(api.WithToken(ctx(t), resp.Token), &api.LookUpRequest{Query: "kim781"})
	if err != nil || len(found.Matches) != 1 {
		t.Fatalf("look up kim781: %v %v", found, err)
	}
	// The directory names only relay circuits; classmates dial kim's
	// machine directly once they have his candidates, as here.
	k := found.Matches[0]
	crowd(t, tcpInfo(t, k.PeerId, []string{fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port)}), 400, nil)
	// Still answering afterwards.
	cl.Do("Show_my_groups")
}

// One coordinator carries 600 relayed connections at once (15 people each
// talking through it to the same 40 others): libp2p sizes its relay service
// from the machine's memory, about 500 circuits here.
func TestRelayCarriesHundredsOfCircuits(t *testing.T) {
	relay := soleRelay(t)
	const sources, destinations = 15, 40
	newHost := func() host.Host {
		h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
			libp2p.ResourceManager(&network.NullResourceManager{}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		return h
	}
	var dst []peer.AddrInfo
	for i := 0; i < destinations; i++ {
		h := newHost()
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := h.Connect(cctx, relay); err != nil {
			t.Fatal(err)
		}
		if _, err := client.Reserve(cctx, h, relay); err != nil {
			t.Fatalf("reservation %d: %v", i, err)
		}
		cancel()
		circuit, err := ma.NewMultiaddr(relay.Addrs[0].String() + "/p2p/" + relay.ID.String() + "/p2p-circuit")
		if err != nil {
			t.Fatal(err)
		}
		dst = append(dst, peer.AddrInfo{ID: h.ID(), Addrs: []ma.Multiaddr{circuit}})
	}
	var open atomic.Int32
	var firstErr atomic.Value
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := 0; i < sources; i++ {
		h := newHost()
		for _, d := range dst {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				if err := h.Connect(network.WithAllowLimitedConn(cctx, "test"), d); err != nil {
					firstErr.CompareAndSwap(nil, err.Error())
					return
				}
				for _, c := range h.Network().ConnsToPeer(d.ID) {
					if strings.Contains(c.RemoteMultiaddr().String(), "/p2p-circuit") {
						open.Add(1)
						return
					}
				}
				firstErr.CompareAndSwap(nil, "connected, but not through the relay")
			}()
		}
	}
	wg.Wait()
	if n := int(open.Load()); n != sources*destinations {
		t.Fatalf("%d of %d relayed connections open at once; first refusal: %v", n, sources*destinations, firstErr.Load())
	}
}

// freePort is a TCP port on 127.0.0.1 nothing listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
