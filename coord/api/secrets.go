package api

import (
	"encoding/base64"
	"fmt"
	"strings"

	"golang.org/x/crypto/argon2"
	"golang.org/x/text/secure/precis"
)

// Password rules, checked by the client on what the person types and by
// the coordinators on what they receive.
const (
	MinPasswordLen = 8
	MaxPasswordLen = 1024
)

// MaxLoginIDLen bounds a login id in bytes: a 64-byte username and a
// 32-digit roll number.
const MaxLoginIDLen = 96

// ValidatePassword checks the length rules: the client on what the
// person typed, the coordinators on the secret they receive.
func ValidatePassword(pw string) error {
	switch {
	case len(pw) < MinPasswordLen:
		return fmt.Errorf("password is too short: use at least %d characters", MinPasswordLen)
	case len(pw) > MaxPasswordLen:
		return fmt.Errorf("password is too long: the limit is %d bytes", MaxPasswordLen)
	}
	return nil
}

// NormalizeLoginID is the one spelling of a login id (or username) that
// keys an account: PRECIS case-mapped (RFC 8265: width-mapped, NFC,
// case-folded), so "ＡＬＩＣＥ101" and "Alice101" are the same person. A
// string PRECIS refuses is only lower-cased (it names no new account).
func NormalizeLoginID(s string) string {
	if n, err := precis.UsernameCaseMapped.String(s); err == nil {
		return n
	}
	return strings.ToLower(s)
}

// authLabel separates the log-in secret from every other use of the
// password (the client's own key for its profile uses a random salt).
const authLabel = "e2em log-in secret v1\x00"

// AuthSecret is what an e2em client sends as the "password" of SignUp and
// LogIn: argon2id of the person's password, salted with a label and the
// login id, so that the coordinators never see the password itself and
// cannot use it to open the keys a profile keeps encrypted under it
// (issue 12, point 3). Any client that wants to share accounts with the
// e2em apps derives it the same way: argon2id(password, salt = label ||
// login id, 2 passes, 19 MiB, 1 lane, 32 bytes), base64url without padding.
func AuthSecret(loginID, password string) string {
	salt := append([]byte(authLabel), NormalizeLoginID(loginID)...)
	key := argon2.IDKey([]byte(password), salt, 2, 19*1024, 1, 32)
	return base64.RawURLEncoding.EncodeToString(key)
}
