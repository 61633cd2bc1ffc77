package e2e

import (
	"strings"
	"testing"

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
