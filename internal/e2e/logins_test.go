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

// Issue 14, point 3: everyone behind one campus NAT shares an address, and
// one person's typos (or a guesser's spray) must not lock the others out.
// A failing account slows only itself from there; once the address is
// over its failure budget, people whose devices logged in before (device
// tickets) still log in at once, and only devices new to their accounts
// wait.
func TestOneAddressFailingDoesNotShutOutItsNeighbours(t *testing.T) {
	c := ct.Start(t, ct.Options{N: 3})
	campus := api.NewCoordinatorClient(c.ConnFrom(c.Layout.LB, "127.0.0.7"))
	elsewhere := api.NewCoordinatorClient(c.ConnFrom(c.Layout.LB, "127.0.0.8"))
	typist := signUp(t, elsewhere, "typist", "1", "password123")
	known := signUp(t, elsewhere, "known", "1", "password123")
	newcomer := signUp(t, elsewhere, "newcomer", "1", "password123")
	late := signUp(t, elsewhere, "late", "1", "password123")
	logInFrom := func(login, pw string, ticket []byte) (*api.LogInResponse, error) {
		return campus.LogIn(ctx(t), &api.LogInRequest{LoginId: login, Password: pw, DeviceTicket: ticket})
	}
	first, err := logInFrom(known, "password123", nil)
	if err != nil || len(first.DeviceTicket) == 0 {
		t.Fatalf("first log-in from campus: %v (ticket %x)", err, first.GetDeviceTicket())
	}

	// The typist fails ten times: the typist waits, a neighbour new to
	// this address logs in.
	for i := range 10 {
		_, err := logInFrom(typist, fmt.Sprintf("typo%d", i), nil)
		wantCode(t, err, codes.Unauthenticated, "a typo")
	}
	_, err = logInFrom(typist, "password123", nil)
	wantCode(t, err, codes.ResourceExhausted, "the typist after ten typos")
	if _, err := logInFrom(newcomer, "password123", nil); err != nil {
		t.Fatalf("a neighbour after the typist's ten failures: %v", err)
	}

	// A guesser sprays one password over many accounts from the same
	// address until its failure budget is spent.
	for i := range 20 {
		_, err := logInFrom(fmt.Sprintf("nobody%c", 'a'+i), "password123", nil)
		wantCode(t, err, codes.Unauthenticated, "a spray guess")
	}
	_, err = logInFrom(late, "password123", nil)
	wantCode(t, err, codes.ResourceExhausted, "a device new to its account, from an address over its failure budget")
	// A forged or another account's ticket is no ticket.
	_, err = logInFrom(late, "password123", first.DeviceTicket)
	wantCode(t, err, codes.ResourceExhausted, "another account's device ticket")
	// The neighbour whose device logged in before goes on at once, and
	// keeps the same device.
	again, err := logInFrom(known, "password123", first.DeviceTicket)
	if err != nil {
		t.Fatalf("a known device from an address over its failure budget: %v", err)
	}
	// A known device's own failures count against it alone: ten, then it
	// waits; the address's budget is untouched by them, and a renewed
	// ticket still names the same device (its wait goes on).
	for i := range 10 {
		_, err := logInFrom(known, fmt.Sprintf("typo%d", i), again.DeviceTicket)
		wantCode(t, err, codes.Unauthenticated, "a known device's typo")
	}
	_, err = logInFrom(known, "password123", first.DeviceTicket)
	wantCode(t, err, codes.ResourceExhausted, "a known device after its own ten failures")
	// Elsewhere, nobody is held back.
	if _, err := elsewhere.LogIn(ctx(t), &api.LogInRequest{LoginId: known, Password: "password123"}); err != nil {
		t.Fatalf("the same account from another address: %v", err)
	}
}
