// Package api owns the coordinator cluster's one face: the protobuf schema
// (coord.proto) and its generated gRPC code, plus the few helpers every
// client of the schema needs (dialing with the cluster CA, the identity-key
// signing payload, token metadata).
package api

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
