package api

import (
	"context"
	"crypto/tls"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/e2em/e2em/internal/pki"
)

// admittedServer serves gRPC health on 127.0.0.1 with AdmittedTLS and
// returns its address, the credentials (to take their slots in a test)
// and the CA file clients trust.
func admittedServer(t *testing.T, slots int, wait time.Duration) (addr string, creds *admittedTLS, caFile string) {
	t.Helper()
	dir := t.TempDir()
	ca, _, err := pki.LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	cert, key := filepath.Join(dir, "c.crt"), filepath.Join(dir, "c.key")
	if err := ca.Issue("c1", []string{"127.0.0.1"}, cert, key); err != nil {
		t.Fatal(err)
	}
	cfg, err := pki.ServerConfig(cert, key, "")
	if err != nil {
		t.Fatal(err)
	}
	creds = AdmittedTLS(cfg, slots, wait).(*admittedTLS)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(creds))
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	caFile, _ = pki.CAFiles(dir)
	return ln.Addr().String(), creds, caFile
}

// checkOnce makes one health call on a fresh connection (no retries).
func checkOnce(addr, caFile string, timeout time.Duration) error {
	conn, err := Dial(addr, caFile)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(false))
	return err
}

func TestHandshakesWaitForASlotAndAreRefusedAfterTheirWait(t *testing.T) {
	addr, creds, caFile := admittedServer(t, 1, 300*time.Millisecond)
	if err := checkOnce(addr, caFile, 5*time.Second); err != nil {
		t.Fatalf("with a free slot: %v", err)
	}
	// Every slot busy: a handshake waits, then is refused; the call fails.
	creds.slots <- struct{}{}
	if err := checkOnce(addr, caFile, 2*time.Second); err == nil {
		t.Fatal("a handshake went through with no slot free")
	}
	if creds.stats.Refused.Load() == 0 {
		t.Fatal("the refused handshake was not counted")
	}
	// A slot freed while one waits: it goes through.
	done := make(chan error, 1)
	go func() { done <- checkOnce(addr, caFile, 5*time.Second) }()
	waitFor(t, "a handshake waiting for a slot", func() bool { return creds.stats.Waiting.Load() == 1 })
	<-creds.slots
	if err := <-done; err != nil {
		t.Fatalf("after the slot was freed: %v", err)
	}
	if n := len(creds.slots); n != 0 {
		t.Fatalf("%d slots still held after every handshake ended", n)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 10 s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stallingConn sends what the TLS client writes and never delivers an
// answer: a client that stops after its ClientHello.
type stallingConn struct{ net.Conn }

func (s stallingConn) Read([]byte) (int, error) { select {} }

func TestAClientThatStopsHalfwayHoldsNoSlot(t *testing.T) {
	addr, creds, caFile := admittedServer(t, 1, 2*time.Second)
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	go tls.Client(stallingConn{raw}, &tls.Config{InsecureSkipVerify: true}).Handshake()
	// The server answers the staller's ClientHello and then waits for it,
	// its slot given back: the next client is served at once.
	waitFor(t, "admitted handshake of the staller", func() bool { return creds.stats.Admitted.Load() == 1 })
	if err := checkOnce(addr, caFile, 5*time.Second); err != nil {
		t.Fatalf("a client halfway through its handshake shut out the next: %v", err)
	}
	if n := len(creds.slots); n != 0 {
		t.Fatalf("%d slots held by a client that stopped halfway", n)
	}
}
