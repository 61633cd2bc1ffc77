package e2e

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/e2em/e2em/coord/api"
	ct "github.com/e2em/e2em/internal/clustertest"
)

// One coordinator holds a relay reservation for each of 400 people online
// at once (libp2p's memory-scaled defaults stopped at about 250 inbound
// connections on this machine).
func TestRelayHoldsHundredsOfReservations(t *testing.T) {
	c := ct.Start(t, ct.Options{N: 1})
	relays, err := c.LB().Relays(ctx(t), &api.RelaysRequest{})
	if err != nil || len(relays.Relays) == 0 {
		t.Fatalf("relays: %v %v", relays, err)
	}
	r := relays.Relays[0]
	info := peer.AddrInfo{}
	info.ID, err = peer.Decode(r.PeerId)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range r.Addrs {
		if strings.Contains(a, "/tcp/") && !strings.Contains(a, "/ws") {
			m, err := ma.NewMultiaddr(strings.TrimSuffix(a, "/p2p/"+r.PeerId))
			if err != nil {
				t.Fatal(err)
			}
			info.Addrs = append(info.Addrs, m)
		}
	}
	const people, atOnce = 400, 32
	var reserved, failed atomic.Int32
	var firstErr atomic.Value
	sem := make(chan struct{}, atOnce)
	var wg sync.WaitGroup
	for i := 0; i < people; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			h, err := libp2p.New(libp2p.NoListenAddrs, libp2p.Transport(tcp.NewTCPTransport),
				libp2p.ResourceManager(&network.NullResourceManager{}), libp2p.DisableRelay())
			if err != nil {
				t.Error(err)
				return
			}
			t.Cleanup(func() { h.Close() })
			cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := h.Connect(cctx, info); err == nil {
				_, err = client.Reserve(cctx, h, info)
				if err == nil {
					reserved.Add(1)
					return
				}
				firstErr.CompareAndSwap(nil, err.Error())
			} else {
				firstErr.CompareAndSwap(nil, err.Error())
			}
			failed.Add(1)
		}()
	}
	wg.Wait()
	if reserved.Load() != people {
		t.Fatalf("%d of %d people got a reservation; first refusal: %v", reserved.Load(), people, firstErr.Load())
	}
	// Still held once everyone is in.
	h, err := libp2p.New(libp2p.NoListenAddrs, libp2p.Transport(tcp.NewTCPTransport))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.Connect(ctx(t), info); err != nil {
		t.Fatalf("person %d could not connect: %v", people+1, err)
	}
}
