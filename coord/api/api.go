// Package api owns the coordinator cluster's one face: the protobuf schema
// (coord.proto) and its generated gRPC code, plus the few helpers every
// client of the schema needs (dialing with the cluster CA, the signed
// directory entry, token metadata, the retry schedule) and the server's
// transport (TLS with admitted handshakes, flow-control windows).
package api

import (
	"fmt"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

//go:generate protoc -I ../.. --go_out=../.. --go_opt=paths=source_relative --go-grpc_out=../.. --go-grpc_opt=paths=source_relative coord/api/coord.proto

// Directory bounds, which the coordinators enforce and clients keep to.
const (
	// MaxAddrsPerKind is how many addresses of each kind (direct, relay)
	// a directory entry may hold.
	MaxAddrsPerKind = 16
	// MaxAddrLen bounds one multiaddr's text.
	MaxAddrLen = 256
	// MaxLookUpMatches bounds the entries one LookUp answers (an exact
	// login id is always answered alone).
	MaxLookUpMatches = 20
	// MaxWatch bounds the accounts one Events stream watches for key
	// changes.
	MaxWatch = 2000
)

// identityLabel separates identity-key signatures from anything else the
// libp2p key might sign.
const identityLabel = "e2em identity key v1\x00"

// IdentitySigningPayload is what a client's libp2p Ed25519 key signs to vouch
// for its X25519 identity key: label || login id || 0 || key. Binding the
// login id stops one account's signed key being replayed for another.
func IdentitySigningPayload(loginID string, identityKey []byte) []byte {
	b := make([]byte, 0, len(identityLabel)+len(loginID)+1+len(identityKey))
	b = append(b, identityLabel...)
	b = append(b, loginID...)
	b = append(b, 0)
	return append(b, identityKey...)
}

// SignedKeys is the directory entry a device publishes for loginID: its
// libp2p public key and peer id, its X25519 identity key signed by the
// libp2p key (see IdentitySigningPayload), and the relay circuits it is
// reachable through (direct addresses go end to end, never here).
func SignedKeys(loginID string, key crypto.PrivKey, identityKey []byte, circuits []string) (*Keys, error) {
	pub, err := crypto.MarshalPublicKey(key.GetPublic())
	if err != nil {
		return nil, fmt.Errorf("keys of %s: %w", loginID, err)
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("keys of %s: %w", loginID, err)
	}
	sig, err := key.Sign(IdentitySigningPayload(loginID, identityKey))
	if err != nil {
		return nil, fmt.Errorf("sign the identity key of %s: %w", loginID, err)
	}
	if len(circuits) > MaxAddrsPerKind {
		circuits = circuits[:MaxAddrsPerKind]
	}
	return &Keys{LoginId: loginID, PeerId: id.String(), Libp2PPublicKey: pub,
		IdentityKey: identityKey, IdentitySignature: sig, RelayAddrs: circuits}, nil
}
