package e2e

import (
	"fmt"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/e2em/e2em/coord/api"
	ct "github.com/e2em/e2em/internal/clustertest"
)

// Issue 12, points 1 and 2: log-in and sign-up limits hold under parallel
// calls through the balancer to three coordinators, and count per account
// and address, so a guesser locks out only himself. Each "computer" is
// its own loopback address, which the coordinators see through the
// balancer's PROXY header.
func TestLogInLimitsHoldAndLockOutOnlyTheGuesser(t *testing.T) {
	c := ct.Start(t, ct.Options{N: 3, CoordArgs: []string{"-max-signups-per-addr", "3"}})
	from := func(ip string) api.CoordinatorClient { return api.NewCoordinatorClient(c.ConnFrom(c.Layout.LB, ip)) }
	owner, guesser, sprayer := from("127.0.0.3"), from("127.0.0.2"), from("127.0.0.4")
	victim := signUp(t, owner, "vic", "500", "password123")

	// 60 wrong guesses at once: exactly the 10 allowed reach the password
	// check (the next is allowed a minute after the last).
	const guesses = 60
	var wg sync.WaitGroup
	answers := make([]error, guesses)
	for i := range guesses {
		pw := fmt.Sprintf("guess%04d", i)
		wg.Go(func() {
			_, answers[i] = guesser.LogIn(ctx(t), &api.LogInRequest{LoginId: victim, Password: pw})
		})
	}
	wg.Wait()
	checked := 0
	for i, err := range answers {
		switch status.Code(err) {
		case codes.ResourceExhausted:
		case codes.Unauthenticated:
			checked++
		default:
			t.Fatalf("guess %d: %v", i, err)
		}
	}
	if checked != 10 {
		t.Fatalf("%d of %d parallel guesses reached the password check; the limit is 10", checked, guesses)
	}

	// The guesser's own address is held back, even with the right
	// password; the owner, elsewhere, logs in at once.
	_, err := guesser.LogIn(ctx(t), &api.LogInRequest{LoginId: victim, Password: "password123"})
	wantCode(t, err, codes.ResourceExhausted, "the guessing address after its 10 failures")
	logIn(t, owner, victim, "password123")

	// One address guessing many accounts: 30 failures a minute, then no more.
	for i := range 30 {
		_, err := sprayer.LogIn(ctx(t), &api.LogInRequest{LoginId: fmt.Sprintf("nobody%d", i), Password: "password123"})
		wantCode(t, err, codes.Unauthenticated, "a spray guess")
	}
	_, err = sprayer.LogIn(ctx(t), &api.LogInRequest{LoginId: victim, Password: "password123"})
	wantCode(t, err, codes.ResourceExhausted, "the 31st failure from one address in a minute")

	// Sign-ups: three an hour from one address, counted in parallel too.
	maker := from("127.0.0.5")
	answers = make([]error, 8)
	for i := range answers {
		wg.Go(func() {
			_, answers[i] = maker.SignUp(ctx(t), &api.SignUpRequest{Username: fmt.Sprintf("bulk%c", 'a'+i), RollNumber: "1", Password: "password123"})
		})
	}
	wg.Wait()
	made := 0
	for i, err := range answers {
		switch status.Code(err) {
		case codes.OK:
			made++
		case codes.ResourceExhausted:
		default:
			t.Fatalf("sign-up %d: %v", i, err)
		}
	}
	if made != 3 {
		t.Fatalf("%d of 8 parallel sign-ups from one address were made; the limit is 3", made)
	}
	signUp(t, from("127.0.0.6"), "elsewhere", "1", "password123")
}

// Issue 12, point 5: no number of accounts sharing a roll number can make
// a person's look-up too big to answer; an exact login id is answered
// alone, and a shared roll number lists at most 20.
func TestLookUpStaysSmall(t *testing.T) {
	c := sharedCluster(t)
	lb := c.LB()
	victim := signUp(t, lb, "lux", "5550", "password123")
	for i := range 25 {
		signUp(t, lb, fmt.Sprintf("crowd%c%c", 'a'+i/26, 'a'+i%26), "5550", "password123")
	}
	authed := logIn(t, lb, victim, "password123")
	look, err := lb.LookUp(authed, &api.LookUpRequest{Query: victim})
	if err != nil || len(look.Matches) != 1 || look.Matches[0].LoginId != victim {
		t.Fatalf("looking up %s: %v %v", victim, look, err)
	}
	look, err = lb.LookUp(authed, &api.LookUpRequest{Query: "5550"})
	if err != nil || len(look.Matches) != api.MaxLookUpMatches {
		t.Fatalf("26 people share roll number 5550: %d matches (want %d), %v", len(look.GetMatches()), api.MaxLookUpMatches, err)
	}
}
