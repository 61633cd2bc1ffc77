package e2e

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/e2em/e2em/coord/api"
	ct "github.com/e2em/e2em/internal/clustertest"
)

// A backend killed with -9 gets no new connections once one health-check
// interval (1 s) has passed.
func TestKilledBackendGetsNoNewConnections(t *testing.T) {
	c := ct.Start(t, ct.Options{N: 3})
	victim := c.Layout.Coordinators[2]
	c.Signal(victim.ID, syscall.SIGKILL)
	killed := time.Now()
	ct.Eventually(t, 3*time.Second, func() error {
		rows, err := c.Backends()
		if err != nil {
			return err
		}
		for _, r := range rows {
			if r.Addr == victim.API && r.Healthy {
				return fmt.Errorf("%s still healthy", r.Addr)
			}
		}
		return nil
	})
	if took := time.Since(killed); took > 1500*time.Millisecond {
		t.Fatalf("the balancer took %v to notice (interval 1 s)", took)
	}
	before := totalFor(t, c, victim.API)
	for i := 0; i < 30; i++ {
		conn := c.NewConn(c.Layout.LB)
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{})
		cancel()
		conn.Close()
		if err != nil {
			t.Fatalf("connection %d through the balancer failed: %v", i, err)
		}
	}
	if after := totalFor(t, c, victim.API); after != before {
		t.Fatalf("the killed backend got %d new connections", after-before)
	}
}

func totalFor(t *testing.T, c *ct.Cluster, addr string) uint64 {
	rows, err := c.Backends()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		if r.Addr == addr {
			return r.Total
		}
	}
	t.Fatalf("no backend %s", addr)
	return 0
}

// SIGTERM to the balancer drains: an open connection keeps working while
// new ones are refused.
func TestBalancerDrainLetsOpenConnectionFinish(t *testing.T) {
	c := ct.Start(t, ct.Options{N: 3, LBArgs: []string{"-drain-timeout", "20s"}})
	conn := c.NewConn(c.Layout.LB)
	cl := api.NewCoordinatorClient(conn)
	signUp(t, cl, "drain", "501", "password123")
	pid := c.Signal("lb", syscall.SIGTERM)
	// New connections are refused once the listener closes...
	ct.Eventually(t, 5*time.Second, func() error {
		fresh := c.NewConn(c.Layout.LB)
		defer fresh.Close()
		cctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		if _, err := healthpb.NewHealthClient(fresh).Check(cctx, &healthpb.HealthCheckRequest{}); err == nil {
			c.Refresh()
			if c.Layout.PIDs["lb"] != pid {
				return nil // bootstrap already restarted the balancer
			}
			return fmt.Errorf("a new connection was served while draining")
		}
		return nil
	})
	// ...while the open one still carries calls.
	authed := logIn(t, cl, "drain501", "password123")
	if _, err := cl.MyGroups(authed, &api.ListGroupsRequest{}); err != nil {
		t.Fatalf("open connection broken by the drain: %v", err)
	}
	conn.Close()
	// With its last connection gone the old balancer exits; bootstrap
	// starts a new one.
	ct.Eventually(t, 10*time.Second, func() error {
		c.Refresh()
		if c.Layout.PIDs["lb"] == pid {
			return fmt.Errorf("old balancer still running")
		}
		return nil
	})
	c.WaitReady(20 * time.Second)
}

// Coordinators join at run time (bootstrap grows the cluster) and leave.
func TestMembersJoinAndLeave(t *testing.T) {
	c := ct.Start(t, ct.Options{N: 3})
	signUp(t, c.LB(), "mona", "601", "password123")
	dir := c.Dir
	c.Stop()
	c = ct.Start(t, ct.Options{N: 4, Dir: dir})
	st, err := c.Admin(0).Status(ctx(t), &api.StatusRequest{})
	if err != nil || len(st.Members) != 4 {
		t.Fatalf("status after growing: %v %v", st, err)
	}
	authed := logIn(t, c.Coord(3), "mona601", "password123")
	if look, err := c.Coord(3).LookUp(authed, &api.LookUpRequest{Query: "mona"}); err != nil || len(look.Matches) != 1 {
		t.Fatalf("the new member does not hold earlier state: %v %v", look, err)
	}
	if _, err := c.Admin(1).Leave(ctx(t), &api.LeaveRequest{Id: "c4"}); err != nil {
		t.Fatal(err)
	}
	st, err = c.Admin(0).Status(ctx(t), &api.StatusRequest{})
	if err != nil || len(st.Members) != 3 {
		t.Fatalf("status after leaving: %v %v", st, err)
	}
	// Only coordinators may call the Cluster service.
	_, err = api.NewClusterClient(c.Conn(c.Layout.LB)).Status(ctx(t), &api.StatusRequest{})
	if err == nil {
		t.Fatal("a client without a cluster certificate called Cluster.Status")
	}
}

// Metrics are valid Prometheus text and say what the issue asks.
func TestMetricsArePrometheusText(t *testing.T) {
	c := sharedCluster(t)
	want := map[string][]string{
		c.Layout.LBMetrics:               {"e2em_lb_backend_active_connections", "e2em_lb_backend_bytes_total", "e2em_lb_backend_healthy", "e2em_lb_connections_accepted_total", "e2em_lb_connections_limit", "e2em_lb_capacity_used_ratio"},
		c.Layout.Coordinators[0].Metrics: {"e2em_coord_requests_total", "e2em_raft_applied_index", "e2em_raft_has_leader", "libp2p_relaysvc_status"},
	}
	for addr, names := range want {
		families, err := ct.Metrics(addr)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if _, ok := families[n]; !ok {
				t.Errorf("%s: no %s", addr, n)
			}
		}
	}
	// The balancer says how far it is from refusing people: a limit no
	// higher than -max-conns (20,000 by default), and a share of it in use.
	families, err := ct.Metrics(c.Layout.LBMetrics)
	if err != nil {
		t.Fatal(err)
	}
	limit := families["e2em_lb_connections_limit"].GetMetric()[0].GetGauge().GetValue()
	used := families["e2em_lb_capacity_used_ratio"].GetMetric()[0].GetGauge().GetValue()
	if limit < 1 || limit > 20000 || used < 0 || used >= 1 {
		t.Fatalf("the balancer's capacity: limit %v, used %v", limit, used)
	}
}
