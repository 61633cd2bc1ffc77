package e2e

import (
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/e2em/e2em/coord/api"
	ct "github.com/e2em/e2em/internal/clustertest"
)

// Offline first: with the whole cluster down, a person logs in on their
// own profile, reads their history and writes (it queues, and they are
// told the cluster is away); when the cluster is back the engine logs in
// to it by itself and the message goes.
func TestOfflineFirstLogIn(t *testing.T) {
	c := ct.Start(t, ct.Options{N: 3})
	a, b := account(t, c, "ofa", "971"), account(t, c, "ofb", "972")
	a.Deliver(b, "ofb972", "before the outage")
	aProfile := a.Profile
	a.Quit()
	dir := c.Dir
	c.Stop()

	a = c.StartClient(t, "ofa971-offline", ct.ClientOptions{Profile: aProfile})
	if r := a.Try("Login ofa971 wrong-password"); r["ok"] == true || !strings.Contains(r.S("error"), "wrong password") {
		t.Fatalf("a wrong password offline: %v", r)
	}
	if r := a.Do("Login ofa971 password123"); r.S("text") != "Successfully LOGGED IN!" {
		t.Fatalf("offline log-in answered %v", r)
	}
	away := a.WaitEvent(wait, "connection", map[string]string{"text": "disconnected"})
	if !strings.Contains(away.S("body"), "working offline") {
		t.Fatalf("the client was told %q", away.S("body"))
	}
	if h := a.Do("History ofb972").S("text"); !strings.Contains(h, "before the outage") {
		t.Fatalf("history offline: %q", h)
	}
	if r := a.Do("Send ofb972 written while the cluster was down"); r.S("text") != "Message Sent!" {
		t.Fatalf("sending offline: %v", r)
	}

	ct.Start(t, ct.Options{N: 3, Dir: dir})
	a.WaitEvent(wait, "connection", map[string]string{"text": "connected"})
	b.WaitEvent(wait, "message", map[string]string{"from": "ofa971", "body": "written while the cluster was down"})
	a.WaitEvent(wait, "delivered", map[string]string{"to": "ofb972"})
}

// The app restarts (or crashes) while its session is valid: logging in
// again resumes the session the encrypted profile kept, without a LogIn
// call — no password hash on the cluster — and everything works; so does
// a restart of the whole cluster under running clients. A wrong password
// still opens nothing; after a log-out the next log-in hashes.
func TestRestartResumesTheSessionWithoutHashing(t *testing.T) {
	c := ct.Start(t, ct.Options{N: 3})
	a, b := account(t, c, "rsa", "981"), account(t, c, "rsb", "982")
	a.Deliver(b, "rsb982", "before the restart")
	profile := a.Profile
	a.Kill()
	before := c.LogInCalls()
	if before < 2 {
		t.Fatalf("%v LogIn calls counted for two log-ins", before)
	}
	a = c.StartClient(t, "rsa981-again", ct.ClientOptions{Profile: profile})
	if r := a.Try("Login rsa981 wrong-password"); r["ok"] == true {
		t.Fatalf("a wrong password on a kept session: %v", r)
	}
	if r := a.Do("Login rsa981 password123"); r.S("text") != "Successfully LOGGED IN!" {
		t.Fatalf("log-in after the restart answered %v", r)
	}
	a.Deliver(b, "rsb982", "after the restart")
	b.Deliver(a, "rsa981", "welcome back")
	if after := c.LogInCalls(); after != before {
		t.Fatalf("the restarted client's log-in made %v LogIn calls, want none", after-before)
	}
	// The whole cluster restarts under the two running clients: they go
	// on with their sessions (any coordinator checks a token with the
	// cluster's key, which the restart keeps) and none hashes a password.
	dir := c.Dir
	c.Stop()
	c = ct.Start(t, ct.Options{N: 3, Dir: dir})
	a.Deliver(b, "rsb982", "after the cluster restarted")
	b.Deliver(a, "rsa981", "me too")
	// An authenticated call to the restarted cluster works on the old
	// session once the client's connection is back.
	ct.Eventually(t, wait, func() error {
		if r := a.Try("Show_my_groups"); r["ok"] != true {
			return fmt.Errorf("Show_my_groups: %v", r)
		}
		return nil
	})
	if n := c.LogInCalls(); n != 0 {
		t.Fatalf("after a cluster restart the clients made %v LogIn calls, want none", n)
	}
	before = 0
	a.Do("Logout")
	a.Do("Login rsa981 password123")
	if after := c.LogInCalls(); after != before+1 {
		t.Fatalf("a log-in after logging out made %v LogIn calls, want 1", after-before)
	}
	// The profile keeps its device ticket through the log-out: when a
	// guesser on the same address spends the address's failure budget, this
	// device still logs in (issue 14, point 3).
	guesser := api.NewCoordinatorClient(c.ConnFrom(c.Layout.LB, "127.0.0.1"))
	for i := range 30 {
		_, err := guesser.LogIn(ctx(t), &api.LogInRequest{LoginId: fmt.Sprintf("nobody%c", 'a'+i), Password: "password123"})
		wantCode(t, err, codes.Unauthenticated, "a spray guess")
	}
	_, err := guesser.LogIn(ctx(t), &api.LogInRequest{LoginId: "rsa981", Password: api.AuthSecret("rsa981", "password123")})
	wantCode(t, err, codes.ResourceExhausted, "a device new to the account once the address is over its budget")
	a.Do("Logout")
	if r := a.Do("Login rsa981 password123"); r.S("text") != "Successfully LOGGED IN!" {
		t.Fatalf("the ticketed device on an address over its failure budget: %v", r)
	}
}
