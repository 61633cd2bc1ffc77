package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/desktop/engine/p2p"
	ct "github.com/e2em/e2em/internal/clustertest"
	"github.com/e2em/e2em/internal/loadgen"
)

// crowdSize is "a few hundred" simulated people (issue 14): each its own
// TLS connection through the balancer, a real log-in, keys in the
// directory, an Events stream and a libp2p host with two relay
// reservations.
const crowdSize = 300

// Issue 14: a few hundred people online on three coordinators, every one
// reachable through a relay circuit it published; a relay is killed and
// each of its people re-reserves and stays reachable; then the whole
// cluster restarts and the reconnect storm resumes every session without
// a single LogIn (no argon2id hash).
func TestHundredsOnlineSurviveARelayLossAndAClusterRestart(t *testing.T) {
	c := ct.Start(t, ct.Options{N: 3})
	bg := context.Background()
	relays, err := loadgen.RelayInfos(ctx(t), c.LB())
	if err != nil || len(relays) != 3 {
		t.Fatalf("relays: %v (%d)", err, len(relays))
	}
	crowd := &loadgen.Crowd{LB: c.Layout.LB, CAFile: c.CAFile()}
	people := crowd.Add(0, crowdSize)
	t.Cleanup(func() { loadgen.Each(people, 64, func(p *loadgen.Person) error { p.Close(); return nil }) })
	start := time.Now()
	logins, err := loadgen.Online(bg, people, relays, 32)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d people signed up and online in %v (their log-ins at once: %v)", crowdSize, time.Since(start).Round(time.Millisecond), logins.Round(time.Millisecond))
	reserved := func(what string) {
		t.Helper()
		wctx, cancel := context.WithTimeout(bg, wait)
		defer cancel()
		if missing := loadgen.WaitReserved(wctx, people, p2p.RelaysPerPeer); missing > 0 {
			t.Fatalf("%s: %d of %d people hold fewer than %d reservations", what, missing, crowdSize, p2p.RelaysPerPeer)
		}
	}
	reserved("online")
	// The prober is one more person: relays join directory devices only.
	prober := crowd.Add(crowdSize, crowdSize+1)
	t.Cleanup(prober[0].Close)
	if _, err := loadgen.Online(bg, prober, relays, 1); err != nil {
		t.Fatal(err)
	}
	// Everyone is reached through what they published, within d (each
	// one missed is tried again until then).
	reachable := func(what string, d time.Duration) {
		t.Helper()
		start := time.Now()
		left := people
		ct.Eventually(t, d, func() error {
			var err error
			if left, err = loadgen.Reachable(bg, prober[0], left, 16); len(left) > 0 {
				return fmt.Errorf("%s: %d of %d people cannot be reached through their relays: %w", what, len(left), crowdSize, err)
			}
			return nil
		})
		t.Logf("%s: all %d reachable through their relays in %v", what, crowdSize, time.Since(start).Round(time.Millisecond))
	}
	reachable("online", wait)
	// Two relays each, spread over all three by the rendezvous hash.
	share := loadgen.RelayShare(people)
	t.Logf("reservations per relay: %v", share)
	if len(share) != 3 {
		t.Fatalf("the crowd reserved on %d relays, want all 3: %v", len(share), share)
	}

	// A relay dies: its people hold two reservations again within the
	// wait, and every one is reachable through what it published.
	infos, err := c.LB().Relays(ctx(t), &api.RelaysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	victim, most := "", 0
	for _, r := range infos.Relays {
		if share[r.PeerId] > most {
			victim, most = r.CoordinatorId, share[r.PeerId]
		}
	}
	victimPeer := ""
	for _, r := range infos.Relays {
		if r.CoordinatorId == victim {
			victimPeer = r.PeerId
		}
	}
	// It stays down until its people have moved: each holds two
	// reservations on the two relays left and has published them.
	bringBack := c.KeepDown(victim)
	start = time.Now()
	ct.Eventually(t, wait, func() error {
		if n := loadgen.RelayShare(people)[victimPeer]; n > 0 {
			return fmt.Errorf("%d people still hold %s (%s), which died", n, victim, victimPeer)
		}
		return nil
	})
	reserved(fmt.Sprintf("after relay %s (%d people's) died", victim, most))
	t.Logf("%d people moved off the dead relay in %v; reservations per relay: %v", most, time.Since(start).Round(time.Millisecond), loadgen.RelayShare(people))
	reachable("after a relay died", wait)
	bringBack()

	// The whole cluster restarts under the crowd; everyone reconnects at
	// once on the session it holds: no LogIn at all.
	dir := c.Dir
	c.Stop()
	loadgen.Each(people, 64, func(p *loadgen.Person) error { p.Disconnect(); return nil })
	c = ct.Start(t, ct.Options{N: 3, Dir: dir})
	took, err := loadgen.Reconnect(bg, people)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d people reconnected at once in %v", crowdSize, took.Round(time.Millisecond))
	if n := c.LogInCalls(); n != 0 {
		t.Fatalf("the reconnect storm made %v LogIn calls, want none", n)
	}
	reachable("after the cluster restarted", 2*wait)
	reserved("after the cluster restarted")
}

// Issue 14, point 1: relay room grows with members that do not vote.
// Five coordinators of which three vote: Raft's writes still wait on
// three, and the crowd's reservations spread over all five relays, so
// the cluster holds 5/3 the people a three-member one does.
func TestNonVotingMembersAddRelayRoom(t *testing.T) {
	c := ct.Start(t, ct.Options{N: 5, Voters: 3})
	st, err := c.Admin(0).Status(ctx(t), &api.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	voters := 0
	for _, m := range st.Members {
		if m.Voter {
			voters++
		}
	}
	if len(st.Members) != 5 || voters != 3 {
		t.Fatalf("%d members, %d voting; want 5 and 3: %v", len(st.Members), voters, st.Members)
	}
	bg := context.Background()
	var relays []peer.AddrInfo
	ct.Eventually(t, wait, func() error {
		if relays, err = loadgen.RelayInfos(ctx(t), c.LB()); err == nil && len(relays) != 5 {
			err = fmt.Errorf("%d relays listed, want 5", len(relays))
		}
		return err
	})
	const n = 100
	crowd := &loadgen.Crowd{LB: c.Layout.LB, CAFile: c.CAFile()}
	people := crowd.Add(0, n)
	t.Cleanup(func() { loadgen.Each(people, 64, func(p *loadgen.Person) error { p.Close(); return nil }) })
	if _, err := loadgen.Online(bg, people, relays, 32); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(bg, wait)
	defer cancel()
	if missing := loadgen.WaitReserved(wctx, people, p2p.RelaysPerPeer); missing > 0 {
		t.Fatalf("%d of %d people hold fewer than %d reservations", missing, n, p2p.RelaysPerPeer)
	}
	share := loadgen.RelayShare(people)
	t.Logf("reservations per relay: %v", share)
	// 200 reservations over 5 relays: 40 each on average; a relay the hash
	// left nearly empty would mean the non-voters are not used.
	if len(share) != 5 {
		t.Fatalf("the crowd reserved on %d relays, want all 5: %v", len(share), share)
	}
	for id, k := range share {
		if k < 15 {
			t.Fatalf("relay %s holds %d of 200 reservations: %v", id, k, share)
		}
	}
}
