package e2e

import (
	"bytes"
	"crypto/ecdh"
	"testing"
)

// FuzzOpenEnvelope is the receive path of mailbox envelopes after the
// protobuf: any ephemeral key and record a stranger stores for us, opened
// as from a known sender, never panics, and only the envelope the sender
// sealed opens.
func FuzzOpenEnvelope(f *testing.F) {
	alice, _ := ecdh.X25519().NewPrivateKey(bytes.Repeat([]byte{1}, 32))
	bob, _ := ecdh.X25519().NewPrivateKey(bytes.Repeat([]byte{2}, 32))
	eph, _ := ecdh.X25519().NewPrivateKey(bytes.Repeat([]byte{3}, 32))
	sender := Party{LoginID: "alice101", Identity: alice.PublicKey().Bytes()}
	recipient := Party{LoginID: "bob102", Identity: bob.PublicKey().Bytes()}
	keys, err := EnvelopeKeys(true, alice, eph.PublicKey().Bytes(), eph, sender, recipient)
	if err != nil {
		f.Fatal(err)
	}
	good, err := Seal(keys, 0, 0, []byte("seed"), zeroReader{})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(eph.PublicKey().Bytes(), good)
	f.Add(make([]byte, 32), good)
	f.Add([]byte{1}, []byte{1, 1, 0})
	f.Fuzz(func(t *testing.T, ephemeral, record []byte) {
		k, err := EnvelopeKeys(false, bob, ephemeral, nil, sender, recipient)
		if err != nil {
			return
		}
		_, pt, err := Open(k, record)
		if err == nil && !(bytes.Equal(record, good) && bytes.Equal(ephemeral, eph.PublicKey().Bytes())) {
			t.Fatalf("opened an envelope alice did not seal: %q", pt)
		}
	})
}
