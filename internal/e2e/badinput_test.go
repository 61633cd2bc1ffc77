package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/coord/server"
	ct "github.com/e2em/e2em/internal/clustertest"
	"github.com/e2em/e2em/internal/pki"
)

// Every bad input gets a clear error, stores nothing, and leaves the
// cluster serving.
func TestBadInputIsRefusedAndStoresNothing(t *testing.T) {
	c := ct.Start(t, ct.Options{N: 3, CoordArgs: []string{"-session-ttl", "3s", "-mailbox-max-count", "4",
		"-mailbox-sender-max-count", "3", "-max-groups-created", "2"}})
	lb := c.LB()
	signUp(t, lb, "kim", "401", "password123")

	bad := []struct {
		name, user, roll, pw string
		code                 codes.Code
	}{
		{"empty username", "", "1", "password123", codes.InvalidArgument},
		{"long username", strings.Repeat("a", 65), "1", "password123", codes.InvalidArgument},
		{"control character", "bad\x07name", "1", "password123", codes.InvalidArgument},
		{"newline", "bad\nname", "1", "password123", codes.InvalidArgument},
		{"roll number with a dash", "okname", "12-3", "password123", codes.InvalidArgument},
		{"empty roll number", "okname", "", "password123", codes.InvalidArgument},
		{"short password", "okname", "1", "short", codes.InvalidArgument},
		{"long password", "okname", "1", strings.Repeat("p", 1025), codes.InvalidArgument},
		{"taken username", "KIM", "999", "password123", codes.AlreadyExists},
	}
	for _, b := range bad {
		_, err := lb.SignUp(ctx(t), &api.SignUpRequest{Username: b.user, RollNumber: b.roll, Password: b.pw})
		wantCode(t, err, b.code, b.name)
	}
	authed := logIn(t, lb, "kim401", "password123")
	// The same person however the login id is written.
	logIn(t, lb, "ＫＩＭ401", "password123")
	look, err := lb.LookUp(authed, &api.LookUpRequest{Query: "okname1"})
	if err != nil || len(look.Matches) != 0 {
		t.Fatalf("a refused sign-up left an account: %v %v", look, err)
	}

	for _, g := range []string{"", strings.Repeat("g", 65), "two words", "bell\a", "a/b"} {
		_, err := lb.CreateGroup(authed, &api.GroupRequest{Name: g})
		wantCode(t, err, codes.InvalidArgument, fmt.Sprintf("group name %q", g))
	}
	_, err = lb.JoinGroup(authed, &api.GroupRequest{Name: "unknown-group"})
	wantCode(t, err, codes.NotFound, "join unknown group")
	if _, err := lb.CreateGroup(authed, &api.GroupRequest{Name: "dup"}); err != nil {
		t.Fatal(err)
	}
	_, err = lb.CreateGroup(authed, &api.GroupRequest{Name: "DUP"})
	wantCode(t, err, codes.AlreadyExists, "duplicate group")
	groups, _ := lb.ListGroups(authed, &api.ListGroupsRequest{})
	if len(groups.Groups) != 1 {
		t.Fatalf("refused groups were stored: %v", groups.Groups)
	}

	big := make([]byte, 1<<20+1)
	_, err = lb.PutMail(authed, &api.PutMailRequest{To: "kim401", Envelope: big})
	wantCode(t, err, codes.InvalidArgument, "mail over 1 MiB")
	_, err = lb.PutMail(authed, &api.PutMailRequest{To: "nobody0", Envelope: []byte("x")})
	wantCode(t, err, codes.NotFound, "mail to nobody")
	for i := 0; i < 3; i++ {
		if _, err := lb.PutMail(authed, &api.PutMailRequest{To: "kim401", Envelope: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	_, err = lb.PutMail(authed, &api.PutMailRequest{To: "kim401", Envelope: []byte("x")})
	wantCode(t, err, codes.ResourceExhausted, "mail over one sender's share")
	// Issue 12, point 10: another sender still has room, until the box is full.
	other := logIn(t, lb, signUp(t, lb, "mia", "404", "password123"), "password123")
	if _, err := lb.PutMail(other, &api.PutMailRequest{To: "kim401", Envelope: []byte("x")}); err != nil {
		t.Fatalf("a second sender was refused by the first one's mail: %v", err)
	}
	_, err = lb.PutMail(other, &api.PutMailRequest{To: "kim401", Envelope: []byte("x")})
	wantCode(t, err, codes.ResourceExhausted, "mail over quota")
	// Groups per creator are capped; the list comes in pages.
	if _, err := lb.CreateGroup(authed, &api.GroupRequest{Name: "second"}); err != nil {
		t.Fatal(err)
	}
	_, err = lb.CreateGroup(authed, &api.GroupRequest{Name: "third"})
	wantCode(t, err, codes.ResourceExhausted, "a third group from one creator")
	first, err := lb.ListGroups(authed, &api.ListGroupsRequest{PageSize: 1})
	if err != nil || len(first.Groups) != 1 || first.NextPageToken == "" {
		t.Fatalf("first page: %v %v", first, err)
	}
	rest, err := lb.ListGroups(authed, &api.ListGroupsRequest{PageSize: 1, PageToken: first.NextPageToken})
	if err != nil || len(rest.Groups) != 1 || rest.NextPageToken != "" || rest.Groups[0].Name == first.Groups[0].Name {
		t.Fatalf("second page: %v %v", rest, err)
	}

	// Tokens: forged, from another cluster, expired, logged out.
	_, err = lb.MyGroups(ctx(t), &api.ListGroupsRequest{})
	wantCode(t, err, codes.Unauthenticated, "no token")
	resp, _ := lb.LogIn(ctx(t), &api.LogInRequest{LoginId: "kim401", Password: "password123"})
	forged := []byte(resp.Token)
	forged[5] ^= 0x02
	_, err = lb.MyGroups(api.WithToken(ctx(t), string(forged)), &api.ListGroupsRequest{})
	wantCode(t, err, codes.Unauthenticated, "forged token")
	otherKey, otherCluster := make([]byte, 32), make([]byte, 16)
	rand.Read(otherKey)
	rand.Read(otherCluster)
	foreign, _ := server.MintToken(otherKey, otherCluster, "kim401", time.Now().Add(time.Hour))
	_, err = lb.MyGroups(api.WithToken(ctx(t), foreign), &api.ListGroupsRequest{})
	wantCode(t, err, codes.Unauthenticated, "other cluster's token")
	ct.Eventually(t, 10*time.Second, func() error {
		_, err := lb.MyGroups(api.WithToken(ctx(t), resp.Token), &api.ListGroupsRequest{})
		if status.Code(err) != codes.Unauthenticated || !strings.Contains(status.Convert(err).Message(), "expired") {
			return fmt.Errorf("token still accepted after its 3 s lifetime: %v", err)
		}
		return nil
	})
	fresh := logIn(t, lb, "kim401", "password123")
	if _, err := lb.LogOut(fresh, &api.LogOutRequest{}); err != nil {
		t.Fatal(err)
	}
	for i := range c.Layout.Coordinators {
		_, err = c.Coord(i).MyGroups(fresh, &api.ListGroupsRequest{})
		wantCode(t, err, codes.Unauthenticated, fmt.Sprintf("logged-out token on coordinator %d", i))
	}

	// Garbage and truncated bytes on every port leave the cluster serving.
	ports := []string{c.Layout.LB}
	for _, co := range c.Layout.Coordinators {
		ports = append(ports, co.API, co.Raft)
	}
	junk := [][]byte{
		[]byte("GET / HTTP/1.1\r\n\r\n"),
		{0x16, 0x03, 0x01, 0x02, 0x00}, // a TLS record header, then nothing
		[]byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n\x16\x03"),
		bytes.Repeat([]byte{0xff}, 4096),
		{},
	}
	for _, addr := range ports {
		for _, j := range junk {
			conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
			if err != nil {
				t.Fatalf("dial %s: %v", addr, err)
			}
			conn.Write(j)
			conn.Close()
		}
		// A TLS client that gives up in the middle of its handshake.
		raw, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err == nil {
			tc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true})
			tc.SetDeadline(time.Now().Add(50 * time.Millisecond))
			tc.Handshake()
			raw.Close()
		}
	}
	c.WaitReady(20 * time.Second)
	signUp(t, lb, "after", "403", "password123")
}

// A coordinator started on another cluster's data refuses to run.
func TestCoordinatorRefusesOtherClustersData(t *testing.T) {
	c := ct.Start(t, ct.Options{N: 1})
	c.Stop()
	otherDir := t.TempDir()
	if _, _, err := pki.LoadOrCreateCA(otherDir); err != nil {
		t.Fatal(err)
	}
	otherCA, _ := pki.CAFiles(otherDir)
	cmd := exec.Command(filepath.Join(c.Bin, "coord"), "-id", "c1", "-data", filepath.Join(c.Dir, "c1"),
		"-ca", otherCA, "-api", "127.0.0.1:0", "-raft", "127.0.0.1:0", "-metrics", "", "-p2p", "/ip4/127.0.0.1/tcp/0")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	cmd.Start()
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("coordinator ran on another cluster's data")
		}
	case <-ctx.Done():
		cmd.Process.Kill()
		t.Fatalf("coordinator kept running on another cluster's data:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "belongs to another cluster") {
		t.Fatalf("the refusal does not say why:\n%s", out.String())
	}
	if _, err := os.Stat(filepath.Join(c.Dir, "c1", "badger")); err != nil {
		t.Fatalf("the original data is gone: %v", err)
	}
}
