package api

import (
	"crypto/rand"
	"fmt"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

func TestSignedKeysVouchForTheIdentityKeyOfThatLoginOnly(t *testing.T) {
	key, pub, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	identity := make([]byte, 32)
	rand.Read(identity)
	var circuits []string
	for i := range MaxAddrsPerKind + 5 {
		circuits = append(circuits, fmt.Sprintf("/ip4/127.0.0.1/tcp/%d/p2p-circuit", 1000+i))
	}
	k, err := SignedKeys("alice", key, identity, circuits)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := peer.IDFromPublicKey(pub)
	if k.PeerId != id.String() || k.LoginId != "alice" || len(k.RelayAddrs) != MaxAddrsPerKind {
		t.Fatalf("entry = peer %s login %s %d circuits; want %s, alice, %d", k.PeerId, k.LoginId, len(k.RelayAddrs), id, MaxAddrsPerKind)
	}
	got, err := crypto.UnmarshalPublicKey(k.Libp2PPublicKey)
	if err != nil || !got.Equals(pub) {
		t.Fatalf("published libp2p key does not round-trip: %v", err)
	}
	if ok, _ := pub.Verify(IdentitySigningPayload("alice", identity), k.IdentitySignature); !ok {
		t.Fatal("the signature does not verify for alice")
	}
	if ok, _ := pub.Verify(IdentitySigningPayload("mallory", identity), k.IdentitySignature); ok {
		t.Fatal("alice's signed key verifies for another login")
	}
}
