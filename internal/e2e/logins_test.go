package e2e

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/e2em/e2em/coord/api"
	ct "github.com/e2em/e2em/internal/clustertest"
)

// A burst of log-ins larger than the coordinators' hash queue: the ones
// that find no place are told at once to come back (ResourceExhausted with
// a retry time), none waits into a timeout, and e2em clients logging in
// during the burst come back with jitter until every one is in.
func TestLogInBurstIsQueuedAndToldWhenToComeBack(t *testing.T) {
	c := ct.Start(t, ct.Options{N: 3, CoordArgs: []string{"-login-queue", "1"}})
	const people, raw = 8, 30
	for i := 0; i < people; i++ {
		signUp(t, c.LB(), burster("bur", i), "900", "password123")
	}
	clients := make([]*ct.Client, people)
	for i := range clients {
		clients[i] = c.StartClient(t, burster("bus", i), ct.ClientOptions{Args: []string{"-log-level", "info"}})
		clients[i].Do("Sign up " + burster("bus", i) + " 900 password123") // one after another
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	answers := map[codes.Code]int{}
	// The clients log in while 30 raw log-ins arrive at once, all from
	// one address.
	for _, cl := range clients {
		wg.Add(1)
		go func(cl *ct.Client) {
			defer wg.Done()
			if r := cl.Try("Login " + cl.Name + "900 password123"); r.S("text") != "Successfully LOGGED IN!" {
				t.Errorf("%s: %v", cl.Name, r)
			}
		}(cl)
	}
	for i := 0; i < raw; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, err := c.LB().LogIn(ctx(t), &api.LogInRequest{LoginId: burster("bur", i%people) + "900", Password: "password123"})
			if status.Code(err) == codes.ResourceExhausted {
				if after, ok := api.RetryAfter(err); !ok || after <= 0 {
					t.Errorf("a busy answer without a retry time: %v", err)
				}
			}
			mu.Lock()
			answers[status.Code(err)]++
			mu.Unlock()
		}(i)
	}
	wg.Wait()
	if answers[codes.OK]+answers[codes.ResourceExhausted] != raw || answers[codes.ResourceExhausted] == 0 {
		t.Fatalf("%d log-ins at once were answered %v; want OK or told to come back, some of each", raw, answers)
	}
	waited := 0
	for _, cl := range clients {
		if strings.Contains(cl.Log(), "the cluster is busy with log-ins; trying again") {
			waited++
		}
	}
	t.Logf("raw log-ins answered %v; %d of %d clients were told to come back and got in", answers, waited, people)
}

// burster is the i-th username of the burst with prefix.
func burster(prefix string, i int) string { return fmt.Sprintf("%s%c", prefix, 'a'+i) }
