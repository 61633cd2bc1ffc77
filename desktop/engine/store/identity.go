package store

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/json"
	"errors"

	"golang.org/x/crypto/argon2"
)

// Identity is a client's long-term secret keys.
type Identity struct {
	LoginID  string `json:"login_id"`
	Libp2p   []byte `json:"libp2p"`   // marshalled libp2p Ed25519 private key
	X25519   []byte `json:"x25519"`   // X25519 identity private key
	Username string `json:"username"` // as the directory knows it
}

// sealedIdentity is how Identity sits on disk: AES-256-GCM under an
// argon2id key from the password (at rest, not end to end: the 3DES
// construction of DESIGN §5 is for what crosses the network).
type sealedIdentity struct {
	LoginID string `json:"login_id"`
	passwordKey
	Nonce  []byte `json:"nonce"`
	Sealed []byte `json:"sealed"`
}

// passwordKey is how a key is derived from the password: argon2id with
// these parameters and salt, kept beside what the key locks.
type passwordKey struct {
	Time    uint32 `json:"t"`
	Memory  uint32 `json:"m"`
	Threads uint8  `json:"p"`
	Salt    []byte `json:"salt"`
}

// newPasswordKey is a fresh salt with today's parameters (64 MiB, 3 passes).
func newPasswordKey() passwordKey {
	k := passwordKey{Time: 3, Memory: 64 * 1024, Threads: 2, Salt: make([]byte, 16)}
	rand.Read(k.Salt)
	return k
}

// valid refuses parameters no e2em wrote (a damaged or planted file) before
// they cost the machine.
func (k *passwordKey) valid() bool {
	return k.Time > 0 && k.Time <= 16 && k.Memory <= 1<<21 && k.Threads > 0 && len(k.Salt) >= 16
}

// derive is the 32-byte key for password.
func (k *passwordKey) derive(password string) []byte {
	return argon2.IDKey([]byte(password), k.Salt, k.Time, k.Memory, k.Threads, 32)
}

const keyIdentity = "identity"

// Owner is the login id the profile belongs to, or "" for a new profile.
func (s *Store) Owner() (string, error) {
	var si sealedIdentity
	err := s.get(keyIdentity, &si)
	if errors.Is(err, ErrNotFound) {
		return "", nil
	}
	return si.LoginID, err
}

// SaveIdentity encrypts and stores the identity under password.
func (s *Store) SaveIdentity(id *Identity, password string) error {
	si := sealedIdentity{LoginID: id.LoginID, passwordKey: newPasswordKey(), Nonce: make([]byte, 12)}
	rand.Read(si.Nonce)
	aead, err := identityAEAD(password, &si)
	if err != nil {
		return err
	}
	plain, err := json.Marshal(id)
	if err != nil {
		return err
	}
	si.Sealed = aead.Seal(nil, si.Nonce, plain, []byte(id.LoginID))
	clear(plain)
	return s.put(keyIdentity, &si)
}

// LoadIdentity decrypts the identity; ErrWrongPassword if it cannot.
func (s *Store) LoadIdentity(password string) (*Identity, error) {
	var si sealedIdentity
	if err := s.get(keyIdentity, &si); errors.Is(err, ErrNotFound) {
		return nil, ErrNoIdentity
	} else if err != nil {
		return nil, err
	}
	if !si.valid() || len(si.Nonce) != 12 {
		return nil, errors.New("damaged profile: identity parameters")
	}
	aead, err := identityAEAD(password, &si)
	if err != nil {
		return nil, err
	}
	plain, err := aead.Open(nil, si.Nonce, si.Sealed, []byte(si.LoginID))
	if err != nil {
		return nil, ErrWrongPassword
	}
	defer clear(plain)
	var id Identity
	if err := decode(plain, &id); err != nil {
		return nil, err
	}
	return &id, nil
}

func identityAEAD(password string, si *sealedIdentity) (cipher.AEAD, error) {
	key := si.derive(password)
	defer clear(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}
