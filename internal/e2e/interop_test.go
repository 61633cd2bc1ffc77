package e2e

import (
	"bytes"
	"encoding/binary"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/protobuf/proto"

	"github.com/e2em/e2em/coord/api"
)

// grpcResult is what a gRPC call made with curl came back with.
type grpcResult struct {
	status  string // grpc-status from the trailers
	message string // grpc-message, percent-decoded
	body    []byte // the response message without its 5-byte prefix
}

// curlGRPC makes one unary gRPC call with curl: OpenSSL for TLS and
// nghttp2 for HTTP/2, a stack that shares no code with grpc-go. It frames
// the request by hand as the gRPC over HTTP/2 protocol says (a zero
// compression byte, a 4-byte big-endian length, the message).
func curlGRPC(t *testing.T, ca, addr, method string, req proto.Message) grpcResult {
	t.Helper()
	msg, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	framed := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(msg)))
	framed = append(framed, msg...)
	dir := t.TempDir()
	in := filepath.Join(dir, "request")
	if err := os.WriteFile(in, framed, 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "response")
	cmd := exec.Command("curl", "-sS", "--http2", "--max-time", "20", "--cacert", ca,
		"-H", "content-type: application/grpc", "-H", "te: trailers",
		"--data-binary", "@"+in, "-D", "-", "-o", out, "https://"+addr+method)
	headers, err := cmd.Output()
	if err != nil {
		t.Fatalf("curl %s: %v\n%s", method, err, headers)
	}
	var r grpcResult
	for _, line := range strings.Split(string(headers), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch strings.ToLower(k) {
		case "grpc-status":
			r.status = v
		case "grpc-message":
			if r.message, err = url.PathUnescape(v); err != nil {
				t.Fatalf("grpc-message %q is not percent-encoded as the protocol says: %v", v, err)
			}
		}
	}
	if r.status == "" {
		t.Fatalf("curl %s: no grpc-status in the trailers:\n%s", method, headers)
	}
	body, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(body) > 0 {
		if len(body) < 5 || body[0] != 0 || int(binary.BigEndian.Uint32(body[1:5])) != len(body)-5 {
			t.Fatalf("curl %s: response is not one uncompressed gRPC message: % x", method, body)
		}
		r.body = body[5:]
	}
	return r
}

// A gRPC client that is not grpc-go (curl: OpenSSL and nghttp2) checks the
// cluster's health through the balancer and signs up, and gets a bad sign-up
// refused with InvalidArgument and a readable message, as the gRPC over
// HTTP/2 protocol spells them.
func TestNonGoGRPCClientThroughBalancer(t *testing.T) {
	if out, err := exec.Command("curl", "--version").Output(); err != nil || !bytes.Contains(out, []byte("HTTP2")) {
		if os.Getenv("CI") != "" {
			t.Fatalf("curl with HTTP/2 is missing (make deps installs it): %v", err)
		}
		t.Skip("curl with HTTP/2 not installed (make deps installs it)")
	}
	c := sharedCluster(t)
	ca, lb := c.CAFile(), c.Layout.LB

	h := curlGRPC(t, ca, lb, "/grpc.health.v1.Health/Check", &grpc_health_v1.HealthCheckRequest{})
	var health grpc_health_v1.HealthCheckResponse
	if err := proto.Unmarshal(h.body, &health); h.status != "0" || err != nil || health.Status != grpc_health_v1.HealthCheckResponse_SERVING {
		t.Fatalf("health check: status %s, %v, %v", h.status, health.Status, err)
	}

	s := curlGRPC(t, ca, lb, "/"+api.Coordinator_ServiceDesc.ServiceName+"/SignUp",
		&api.SignUpRequest{Username: "curly", RollNumber: "42", Password: "password123"})
	var signed api.SignUpResponse
	if err := proto.Unmarshal(s.body, &signed); s.status != "0" || err != nil || signed.LoginId != "curly42" {
		t.Fatalf("sign up: status %s %q, login %q, %v", s.status, s.message, signed.LoginId, err)
	}
	// The account is real: grpc-go logs in to it.
	logIn(t, c.LB(), "curly42", "password123")

	bad := curlGRPC(t, ca, lb, "/"+api.Coordinator_ServiceDesc.ServiceName+"/SignUp",
		&api.SignUpRequest{Username: "curly two", RollNumber: "42", Password: "password123"})
	if want := "3"; bad.status != want || bad.message == "" || len(bad.body) != 0 {
		t.Fatalf("bad sign-up: want status %s (InvalidArgument) with a message, got %s %q, %d body bytes", want, bad.status, bad.message, len(bad.body))
	}
}

// grpcurl and other tools find the API by server reflection, without a
// copy of coord.proto, and without logging in.
func TestServerReflectionListsTheAPI(t *testing.T) {
	c := sharedCluster(t)
	stream, err := reflectionpb.NewServerReflectionClient(c.Conn(c.Layout.LB)).ServerReflectionInfo(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, s := range resp.GetListServicesResponse().GetService() {
		have[s.Name] = true
	}
	for _, want := range []string{api.Coordinator_ServiceDesc.ServiceName, "grpc.health.v1.Health"} {
		if !have[want] {
			t.Fatalf("reflection lists %v, not %s", have, want)
		}
	}
	// And describes the API's messages, so a tool can encode a call.
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: api.Coordinator_ServiceDesc.ServiceName}}); err != nil {
		t.Fatal(err)
	}
	if resp, err = stream.Recv(); err != nil || len(resp.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
		t.Fatalf("no file descriptor for the API: %v %v", resp.GetErrorResponse(), err)
	}
}
