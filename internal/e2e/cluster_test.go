// Package e2e holds the end-to-end tests: they build the real binaries,
// start bootstrap (coordinators on Raft and badger, the balancer) and talk
// to it over TLS gRPC like any client would.
package e2e

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/e2em/e2em/coord/api"
	ct "github.com/e2em/e2em/internal/clustertest"
)

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func signUp(t testing.TB, c api.CoordinatorClient, user, roll, pw string) string {
	t.Helper()
	resp, err := c.SignUp(ctx(t), &api.SignUpRequest{Username: user, RollNumber: roll, Password: pw})
	if err != nil {
		t.Fatalf("sign up %s: %v", user, err)
	}
	return resp.LoginId
}

func logIn(t testing.TB, c api.CoordinatorClient, login, pw string) context.Context {
	t.Helper()
	resp, err := c.LogIn(ctx(t), &api.LogInRequest{LoginId: login, Password: pw})
	if err != nil {
		t.Fatalf("log in %s: %v", login, err)
	}
	return api.WithToken(ctx(t), resp.Token)
}

func wantCode(t testing.TB, err error, code codes.Code, what string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: want %v, got %v", what, code, err)
	}
	if code != codes.OK && status.Convert(err).Message() == "" {
		t.Fatalf("%s: the error says nothing", what)
	}
}

// One cluster serves the tests that do not break it.
var (
	sharedOnce sync.Once
	shared     *ct.Cluster
)

func sharedCluster(t *testing.T) *ct.Cluster {
	sharedOnce.Do(func() { shared = ct.Start(&sharedTB{T: t}, ct.Options{N: 3}) })
	if shared == nil {
		t.Fatal("shared cluster failed to start")
	}
	return shared
}

// sharedTB outlives the first test that uses the shared cluster: its
// cleanups run from TestMain instead.
type sharedTB struct {
	*testing.T
}

func (s *sharedTB) Cleanup(f func()) { sharedCleanups = append(sharedCleanups, f) }
func (s *sharedTB) TempDir() string  { return mustTempDir() }

var sharedCleanups []func()

func TestMain(m *testing.M) {
	code := m.Run()
	for i := len(sharedCleanups) - 1; i >= 0; i-- {
		sharedCleanups[i]()
	}
	cleanTempDirs()
	ct.RemoveBinaries()
	if code != 0 {
		fmt.Println("e2e failed")
	}
	exit(code)
}

func TestSignUpAndLogInThroughBalancer(t *testing.T) {
	c := sharedCluster(t)
	login := signUp(t, c.LB(), "alice", "101", "correct horse")
	if login != "alice101" {
		t.Fatalf("login id %q, want alice101", login)
	}
	resp, err := c.LB().LogIn(ctx(t), &api.LogInRequest{LoginId: "alice101", Password: "correct horse"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.ObservedAddr == "" || resp.ExpiresUnix <= time.Now().Unix() {
		t.Fatalf("log-in response %v", resp)
	}
	// The token works on every coordinator, not only the one that issued it.
	for i := range c.Layout.Coordinators {
		authed := api.WithToken(ctx(t), resp.Token)
		if _, err := c.Coord(i).MyGroups(authed, &api.ListGroupsRequest{}); err != nil {
			t.Fatalf("token refused by coordinator %d: %v", i, err)
		}
	}
	_, err = c.LB().LogIn(ctx(t), &api.LogInRequest{LoginId: "alice101", Password: "wrong horse"})
	wantCode(t, err, codes.Unauthenticated, "wrong password")
	_, err2 := c.LB().LogIn(ctx(t), &api.LogInRequest{LoginId: "nobody101", Password: "wrong horse"})
	if status.Convert(err).Message() != status.Convert(err2).Message() || status.Code(err2) != codes.Unauthenticated {
		t.Fatalf("unknown user and wrong password must answer alike: %v / %v", err, err2)
	}
}

// Every write acknowledged by one coordinator is visible at once on all.
func TestReadYourWritesOnEveryCoordinator(t *testing.T) {
	c := sharedCluster(t)
	n := len(c.Layout.Coordinators)
	for i := 0; i < n; i++ {
		user := fmt.Sprintf("ryw%c", 'a'+i)
		login := signUp(t, c.Coord(i), user, "7", "password123")
		authed := logIn(t, c.Coord(i), login, "password123")
		group := fmt.Sprintf("ryw-group-%d", i)
		if _, err := c.Coord(i).CreateGroup(authed, &api.GroupRequest{Name: group}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Coord(i).PutMail(authed, &api.PutMailRequest{To: login, Envelope: []byte("note to self")}); err != nil {
			t.Fatal(err)
		}
		for j := 0; j < n; j++ {
			look, err := c.Coord(j).LookUp(authed, &api.LookUpRequest{Query: login})
			if err != nil || len(look.Matches) != 1 {
				t.Fatalf("coordinator %d does not see %s written via %d: %v %v", j, login, i, look, err)
			}
			m, err := c.Coord(j).Members(authed, &api.GroupRequest{Name: group})
			if err != nil || len(m.LoginIds) != 1 || m.LoginIds[0] != login {
				t.Fatalf("coordinator %d does not see group %s: %v %v", j, group, m, err)
			}
			mail, err := c.Coord(j).FetchMail(authed, &api.FetchMailRequest{})
			if err != nil || len(mail.Mail) != 1 {
				t.Fatalf("coordinator %d does not see the mail: %v %v", j, mail, err)
			}
		}
	}
}

func TestGroupsAndMailThroughBalancer(t *testing.T) {
	c := sharedCluster(t)
	a := logIn(t, c.LB(), signUp(t, c.LB(), "gina", "201", "password123"), "password123")
	b := logIn(t, c.LB(), signUp(t, c.LB(), "hugo", "202", "password123"), "password123")
	if _, err := c.LB().CreateGroup(a, &api.GroupRequest{Name: "Chess"}); err != nil {
		t.Fatal(err)
	}
	_, err := c.LB().CreateGroup(b, &api.GroupRequest{Name: "chess"})
	wantCode(t, err, codes.AlreadyExists, "duplicate group, other case")
	_, err = c.LB().JoinGroup(b, &api.GroupRequest{Name: "no-such-group"})
	wantCode(t, err, codes.NotFound, "join unknown group")
	// Hugo subscribes to events, then joins: Gina's group change and mail
	// reach him as pushes. The stream's response headers come once the
	// subscription is in place, before any event: everything after them
	// reaches him.
	events, err := c.LB().Events(b, &api.EventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := events.Header(); err != nil {
		t.Fatalf("events stream headers: %v", err)
	}
	if _, err := c.LB().JoinGroup(b, &api.GroupRequest{Name: "CHESS"}); err != nil {
		t.Fatal(err)
	}
	list, err := c.LB().ListGroups(b, &api.ListGroupsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, g := range list.Groups {
		if g.Name == "Chess" && g.Members == 2 {
			found = true
		}
	}
	if !found {
		t.Fatalf("ListGroups: %v", list.Groups)
	}
	for i := 0; i < 3; i++ {
		if _, err := c.LB().PutMail(a, &api.PutMailRequest{To: "hugo202", Envelope: []byte{byte(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	var sawGroup, sawMail bool
	for !(sawGroup && sawMail) {
		ev, err := events.Recv()
		if err != nil {
			t.Fatalf("events: %v", err)
		}
		sawGroup = sawGroup || ev.GetGroup().GetName() == "Chess"
		sawMail = sawMail || ev.GetMail().GetFrom() == "gina201"
	}
	mail, err := c.LB().FetchMail(b, &api.FetchMailRequest{})
	if err != nil || len(mail.Mail) != 3 {
		t.Fatalf("fetch: %v %v", mail, err)
	}
	for i, m := range mail.Mail {
		if m.Envelope[0] != byte(i) || m.From != "gina201" {
			t.Fatalf("mail out of order: %v", mail.Mail)
		}
	}
	if _, err := c.LB().AckMail(b, &api.AckMailRequest{UpToSeq: mail.Mail[1].Seq}); err != nil {
		t.Fatal(err)
	}
	mail, _ = c.LB().FetchMail(b, &api.FetchMailRequest{})
	if len(mail.Mail) != 1 || mail.Mail[0].Envelope[0] != 2 {
		t.Fatalf("after ack: %v", mail.Mail)
	}
	mine, _ := c.LB().MyGroups(b, &api.ListGroupsRequest{})
	if len(mine.Groups) != 1 {
		t.Fatalf("my groups: %v", mine)
	}
	if _, err := c.LB().LeaveGroup(b, &api.GroupRequest{Name: "chess"}); err != nil {
		t.Fatal(err)
	}
	_, err = c.LB().LeaveGroup(b, &api.GroupRequest{Name: "chess"})
	wantCode(t, err, codes.FailedPrecondition, "leave twice")
	relays, err := c.LB().Relays(ctx(t), &api.RelaysRequest{})
	if err != nil || len(relays.Relays) != len(c.Layout.Coordinators) {
		t.Fatalf("relays: %v %v", relays, err)
	}
}

// kill -9 of the leader while 200 sign-ups run: a new leader within 5 s and
// every acknowledged sign-up on every coordinator afterwards.
func TestLeaderKillDuringSignUps(t *testing.T) {
	c := ct.Start(t, ct.Options{N: 3})
	leader, oldTerm, err := c.LeaderTerm()
	if err != nil {
		t.Fatal(err)
	}
	leaderID := c.Layout.Coordinators[leader].ID
	const total = 200
	var mu sync.Mutex
	var acked []string
	failures := map[string]int{}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < total; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			// Each client has its own connection, as separate people would.
			cl := api.NewCoordinatorClient(c.NewConn(c.Layout.LB))
			cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			resp, err := cl.SignUp(cctx, &api.SignUpRequest{Username: fmt.Sprintf("load%dx", i), RollNumber: "9", Password: "password123"})
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				acked = append(acked, resp.LoginId)
			} else {
				failures[status.Code(err).String()+": "+status.Convert(err).Message()]++
			}
		}(i)
	}
	close(start)
	// Kill the leader once some sign-ups have landed, mid-load.
	ct.Eventually(t, 30*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(acked) < 20 {
			return fmt.Errorf("%d acknowledged", len(acked))
		}
		return nil
	})
	c.Signal(leaderID, syscall.SIGKILL)
	killed := time.Now()
	// A new election (a higher term) with a leader, within 5 s. The
	// killed coordinator is restarted by bootstrap and may win it.
	ct.Eventually(t, 5*time.Second, func() error {
		_, term, err := c.LeaderTerm()
		if err != nil {
			return err
		}
		if term <= oldTerm {
			return fmt.Errorf("still term %d", term)
		}
		return nil
	})
	t.Logf("new leader after %v", time.Since(killed).Round(time.Millisecond))
	wg.Wait()
	t.Logf("%d of %d sign-ups acknowledged; failures: %v", len(acked), total, failures)
	if len(acked) < total/2 {
		t.Fatalf("only %d of %d sign-ups acknowledged", len(acked), total)
	}
	// bootstrap restarts the killed coordinator; then all three must hold
	// every acknowledged account.
	c.WaitReady(30 * time.Second)
	authed := logIn(t, c.LB(), acked[0], "password123")
	for i := range c.Layout.Coordinators {
		for _, login := range acked {
			look, err := c.Coord(i).LookUp(authed, &api.LookUpRequest{Query: login})
			if err != nil || len(look.Matches) != 1 {
				t.Fatalf("coordinator %d lost acknowledged %s: %v %v", i, login, look, err)
			}
		}
	}
}

// A full stop and start from the same data folder loses nothing.
func TestRestartLosesNothing(t *testing.T) {
	c := ct.Start(t, ct.Options{N: 3})
	a := logIn(t, c.LB(), signUp(t, c.LB(), "ivy", "301", "password123"), "password123")
	signUp(t, c.LB(), "jan", "302", "password123")
	if _, err := c.LB().CreateGroup(a, &api.GroupRequest{Name: "persist"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.LB().PutMail(a, &api.PutMailRequest{To: "jan302", Envelope: []byte("kept")}); err != nil {
		t.Fatal(err)
	}
	dir := c.Dir
	c.Stop()
	c2 := ct.Start(t, ct.Options{N: 3, Dir: dir})
	if c2.Layout.LB != c.Layout.LB {
		t.Fatalf("restart moved the balancer from %s to %s", c.Layout.LB, c2.Layout.LB)
	}
	j := logIn(t, c2.LB(), "jan302", "password123")
	for i := range c2.Layout.Coordinators {
		m, err := c2.Coord(i).Members(j, &api.GroupRequest{Name: "persist"})
		if err != nil || len(m.LoginIds) != 1 {
			t.Fatalf("coordinator %d lost the group: %v %v", i, m, err)
		}
		mail, err := c2.Coord(i).FetchMail(j, &api.FetchMailRequest{})
		if err != nil || len(mail.Mail) != 1 || string(mail.Mail[0].Envelope) != "kept" {
			t.Fatalf("coordinator %d lost the mail: %v %v", i, mail, err)
		}
	}
	// An old token still works: the token key survived too.
	if _, err := c2.LB().MyGroups(a, &api.ListGroupsRequest{}); err != nil {
		t.Fatalf("a session from before the restart: %v", err)
	}
}
