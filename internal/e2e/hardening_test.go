package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/desktop/engine"
	"github.com/e2em/e2em/desktop/engine/e2e"
	"github.com/e2em/e2em/desktop/engine/p2p"
	"github.com/e2em/e2em/desktop/engine/wire"
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

// Issue 12, point 13: a libp2p peer without the claimed account's key
// sends Hellos claiming to be someone: refused, nobody is pinned as a
// contact, a From that is no login id never reaches the screen, and a
// burst is cut off before each claim costs a directory look-up.
func TestStrangerHellosPinNobody(t *testing.T) {
	c := sharedCluster(t)
	bob := newPerson(t, c, "hbob", "771")
	claimed := newPerson(t, c, "hann", "772") // a real account bob never talked to
	stranger, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	host := bob.Host()
	// The directory gives no direct address; this stranger knows bob's
	// machine anyway (a neighbour on his LAN could).
	direct, err := host.Network().InterfaceListenAddresses()
	if err != nil {
		t.Fatal(err)
	}
	stranger.Peerstore().AddAddrs(host.ID(), direct, time.Hour)
	hello := func(from string) string {
		t.Helper()
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		st, err := stranger.NewStream(cctx, host.ID(), p2p.ProtocolID)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		eph := make([]byte, 32)
		rand.Read(eph)
		if err := wire.WriteFrame(st, &wire.Frame{Kind: &wire.Frame_Hello{Hello: &wire.Hello{Version: e2e.Version, From: from, To: bob.login, Ephemeral: eph}}}); err != nil {
			t.Fatal(err)
		}
		f, err := wire.ReadFrame(bufio.NewReader(st))
		if err != nil || f.GetReject() == nil {
			t.Fatalf("a stranger's Hello as %q was answered %v, %v", from, f, err)
		}
		return f.GetReject().Reason
	}
	hello(claimed.login)
	bob.await(t, "the refused session reported", func(ev engine.Event) bool {
		return ev.Kind == engine.EventSecurity && ev.From == claimed.login
	})
	contacts, err := bob.Contacts()
	if err != nil {
		t.Fatal(err)
	}
	for _, who := range contacts {
		if who.Login == claimed.login {
			t.Fatalf("a stranger's claim pinned %s as bob's contact", claimed.login)
		}
	}
	if r := hello("x\x1b[2J\nforged line"); !strings.Contains(r, "not a login id") {
		t.Fatalf("a From with control characters: %q", r)
	}
	limited := false
	for range 20 {
		if strings.Contains(hello(claimed.login), "too many") {
			limited = true
			break
		}
	}
	if !limited {
		t.Fatal("20 Hellos at once from one peer were all checked")
	}
}

// Issue 12, point 12: one address cannot take all the balancer's
// connections, and the admin API answers only its token, never a browser.
func TestBalancerLimitsEachSourceAndGuardsItsAdminAPI(t *testing.T) {
	c := ct.Start(t, ct.Options{N: 1, LBArgs: []string{"-max-conns-per-source", "20"}})
	dialFrom := func(ip string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
		conn, err := d.Dial("tcp", c.Layout.LB)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	// closed says whether the balancer closed conn (it sends nothing to an
	// open one before the client speaks; a coordinator closes a connection
	// that never starts TLS after a few seconds, so look quickly).
	closed := func(conn net.Conn) bool {
		conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		_, err := conn.Read(make([]byte, 1))
		var ne net.Error
		return !(errors.As(err, &ne) && ne.Timeout())
	}
	var held []net.Conn
	for range 20 {
		held = append(held, dialFrom("127.0.0.7"))
	}
	// The balancer's event loops accept in their own order: wait until it
	// holds all 20 before the 21st, so that the 21st is the one refused.
	ct.Eventually(t, wait, func() error {
		families, err := ct.Metrics(c.Layout.LBMetrics)
		if err != nil {
			return err
		}
		m := families["e2em_lb_connections_open"].GetMetric()
		if len(m) == 0 {
			return errors.New("no e2em_lb_connections_open yet")
		}
		if open := m[0].GetGauge().GetValue(); open != 20 {
			return fmt.Errorf("the balancer holds %v connections", open)
		}
		return nil
	})
	extra := dialFrom("127.0.0.7")
	for i, conn := range held {
		if closed(conn) {
			t.Fatalf("connection %d of 20 from one address was closed", i)
		}
	}
	extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := extra.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("a 21st connection from one address was kept: %v", err)
	}
	if closed(dialFrom("127.0.0.8")) {
		t.Fatal("another address was refused because of the first one")
	}

	admin := "http://" + c.Layout.LBMetrics + "/backends?addr=127.0.0.1:1"
	token, err := os.ReadFile(filepath.Join(c.Dir, "lb-admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		header map[string]string
		want   int
	}{
		{"no token", nil, http.StatusUnauthorized},
		{"a wrong token", map[string]string{"Authorization": "Bearer wrong-token-0123456789"}, http.StatusUnauthorized},
		{"a web page's request", map[string]string{"Authorization": "Bearer " + strings.TrimSpace(string(token)), "Origin": "https://evil.example"}, http.StatusForbidden},
	} {
		req, _ := http.NewRequest(http.MethodPost, admin, nil)
		for k, v := range tc.header {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Fatalf("POST /backends with %s: %s, want %d", tc.name, resp.Status, tc.want)
		}
	}
	rows, err := c.Backends() // with the token
	if err != nil || len(rows) != 1 {
		t.Fatalf("the admin API with its token: %v %v", rows, err)
	}
}

// Issue 12, point 9: an Events stream ends when its session is logged out.
func TestEventsStreamEndsAtLogOut(t *testing.T) {
	c := sharedCluster(t)
	lb := c.LB()
	authed := logIn(t, lb, signUp(t, lb, "streamer", "5551", "password123"), "password123")
	stream, err := lb.Events(authed, &api.EventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Header(); err != nil {
		t.Fatal(err)
	}
	if _, err := lb.LogOut(authed, &api.LogOutRequest{}); err != nil {
		t.Fatal(err)
	}
	ended := make(chan error, 1)
	go func() {
		_, err := stream.Recv()
		ended <- err
	}()
	select {
	case err := <-ended:
		wantCode(t, err, codes.Unauthenticated, "the stream after its log-out")
	case <-time.After(wait):
		t.Fatal("the events stream outlived its log-out")
	}
}

// Issue 12, point 3: the cluster is never given the password, which also
// locks the profile's keys; it gets a secret derived from it.
func TestClusterNeverSeesThePassword(t *testing.T) {
	c := sharedCluster(t)
	p := newPerson(t, c, "hsec", "773") // signs up and logs in with password123
	_, err := c.LB().LogIn(ctx(t), &api.LogInRequest{LoginId: p.login, Password: "password123"})
	wantCode(t, err, codes.Unauthenticated, "the password itself as the log-in secret")
	logIn(t, c.LB(), p.login, api.AuthSecret(p.login, "password123"))
	if _, err := p.SignUp(context.Background(), "hsecb", "774", "short"); engine.KindOf(err) != engine.KindInvalid {
		t.Fatalf("a short password: %v", err)
	}
}

// Issue 12, point 11: the coordinators' relays serve the devices people
// published in the directory, not any libp2p peer on the internet.
func TestRelayAdmitsOnlyPublishedPeers(t *testing.T) {
	c := sharedCluster(t)
	relays, err := c.LB().Relays(ctx(t), &api.RelaysRequest{})
	if err != nil || len(relays.Relays) == 0 {
		t.Fatalf("relays: %v %v", relays, err)
	}
	r := relays.Relays[0]
	info := tcpInfo(t, r.PeerId, r.Addrs)
	stranger, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	cctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := stranger.Connect(cctx, info); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Reserve(cctx, stranger, info); err == nil {
		t.Fatal("a peer nobody published got a relay reservation")
	}
	// A person's device, published at log-in, holds one and publishes its
	// circuit address.
	p := newPerson(t, c, "hrel", "775")
	authed := logIn(t, c.LB(), signUp(t, c.LB(), "hrelb", "776", "password123"), "password123")
	ct.Eventually(t, wait, func() error {
		look, err := c.LB().LookUp(authed, &api.LookUpRequest{Query: p.login})
		if err != nil {
			return err
		}
		if len(look.Matches) != 1 || len(look.Matches[0].RelayAddrs) == 0 {
			return fmt.Errorf("%s has published no relay address yet", p.login)
		}
		return nil
	})
}

// Issue 12, point 16: a profile folder taken from a stopped client shows
// none of its history or contacts.
func TestProfileRevealsNothingAtRest(t *testing.T) {
	c := sharedCluster(t)
	alice, bob := account(t, c, "hra", "777"), account(t, c, "hrb", "778")
	const secret = "the spare key is under the third flowerpot"
	alice.Deliver(bob, "hrb778", secret)
	profile := bob.Profile
	bob.Quit()
	err := filepath.WalkDir(profile, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, clear := range []string{secret, "hra777"} {
			if bytes.Contains(b, []byte(clear)) {
				t.Errorf("%s holds %q in the clear", path, clear)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Issue 12, point 9: a stream hears the key changes of accounts its owner
// looked up (holding a ticket), and of nobody else.
func TestEventsWatchOnlyWhatWasLookedUp(t *testing.T) {
	c := sharedCluster(t)
	lb := c.LB()
	watched, stranger := newPerson(t, c, "hwa", "779"), newPerson(t, c, "hwb", "780")
	authed := logIn(t, lb, signUp(t, lb, "hwatcher", "781", "password123"), "password123")
	look, err := lb.LookUp(authed, &api.LookUpRequest{Query: watched.login})
	if err != nil || len(look.WatchTickets) != 1 {
		t.Fatalf("look-up: %v %v", look, err)
	}
	stream, err := lb.Events(authed, &api.EventsRequest{
		Watch: []string{stranger.login}, // not honoured without a ticket
		Tickets: []*api.WatchTicket{
			{LoginId: watched.login, Ticket: look.WatchTickets[0]},
			{LoginId: stranger.login, Ticket: look.WatchTickets[0]}, // someone else's ticket
		}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Header(); err != nil {
		t.Fatal(err)
	}
	relog := func(p *person) {
		t.Helper()
		bg := context.Background()
		if err := p.Logout(bg); err != nil {
			t.Fatal(err)
		}
		if err := p.Login(bg, p.login, "password123"); err != nil {
			t.Fatal(err)
		}
	}
	relog(stranger) // publishes its keys again: nobody may hear it here
	relog(watched)
	ev, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := ev.GetKeys().GetKeys().GetLoginId(); got != watched.login {
		t.Fatalf("the first key change heard was %q's, want only %s's", got, watched.login)
	}
}
