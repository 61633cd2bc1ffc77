package main

import (
	"net"
	"strconv"
	"testing"
)

// A new member never gets a port the layout already gave another (which
// is free while that member is not yet running again), nor one picked
// earlier in the same plan.
func TestNewPortsAvoidThoseTheLayoutHolds(t *testing.T) {
	l := &Layout{LB: "127.0.0.1:21000", LBMetrics: "127.0.0.1:21001",
		Coordinators: []Coord{{ID: "c1", API: "127.0.0.1:21002", Raft: "127.0.0.1:21003", Metrics: "127.0.0.1:21004", P2P: 21005}}}
	taken := l.ports()
	if len(taken) != 6 {
		t.Fatalf("the layout holds 6 ports, ports() found %v", taken)
	}
	// Two ports free on this machine now (not among the held ones), offered
	// after every held one, and the first of them offered twice.
	a, b := freeOne(t, l.ports()), 0
	for b = freeOne(t, l.ports()); b == a; b = freeOne(t, l.ports()) {
	}
	candidates := []int{21000, 21001, 21002, 21003, 21004, 21005, 21003, a, a, b}
	i := 0
	next := func() int { i++; return candidates[i-1] }
	var got []int
	for range 2 {
		addr, err := pickPort("127.0.0.1", taken, next)
		if err != nil {
			t.Fatal(err)
		}
		_, p, _ := net.SplitHostPort(addr)
		n, _ := strconv.Atoi(p)
		got = append(got, n)
	}
	if got[0] != a || got[1] != b {
		t.Fatalf("picked %v, want %d then %d (the first candidates nobody holds)", got, a, b)
	}
}

func freeOne(t *testing.T, taken map[int]bool) int {
	addr, err := freePort("127.0.0.1", taken)
	if err != nil {
		t.Fatal(err)
	}
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return n
}

// -lb-port names the balancer's port even when -base-port 0 asks for free
// ports for the coordinators (the README promises the balancer's port).
func TestExplicitBalancerPortHoldsWithFreeCoordinatorPorts(t *testing.T) {
	lb := freeOne(t, map[int]bool{})
	o := &options{n: 2, lbPort: lb, basePort: 0, dataDir: t.TempDir(), host: "127.0.0.1"}
	l, err := loadOrPlanLayout(o)
	if err != nil {
		t.Fatal(err)
	}
	if want := net.JoinHostPort("127.0.0.1", strconv.Itoa(lb)); l.LB != want {
		t.Fatalf("the balancer got %s, want %s", l.LB, want)
	}
	if want := net.JoinHostPort("127.0.0.1", strconv.Itoa(lb+1)); l.LBMetrics != want {
		t.Fatalf("its metrics got %s, want %s", l.LBMetrics, want)
	}
	if len(l.Coordinators) != 2 || l.Coordinators[0].API == l.Coordinators[1].API {
		t.Fatalf("coordinators: %+v", l.Coordinators)
	}
}
