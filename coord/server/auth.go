package server

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/crypto/argon2"
	"golang.org/x/text/secure/precis"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/coord/store/statepb"
)

// Argon2id parameters for new passwords (OWASP's second recommendation:
// 19 MiB, 2 passes, 1 lane). Stored with each hash so they can change.
const (
	argonTime    = 2
	argonMemory  = 19 * 1024
	argonThreads = 1
	argonKeyLen  = 32
	saltLen      = 16
)

// Limits on what people type, in bytes.
const (
	MaxNameLen     = 64
	MaxRollLen     = 32
	MinPasswordLen = api.MinPasswordLen
	MaxPasswordLen = api.MaxPasswordLen
)

// HashPassword derives a new argon2id hash with a fresh salt.
func HashPassword(password string) *statepb.PasswordHash {
	salt := make([]byte, saltLen)
	rand.Read(salt)
	return &statepb.PasswordHash{
		Time: argonTime, MemoryKib: argonMemory, Threads: argonThreads, Salt: salt,
		Hash: argon2.IDKey([]byte(password), salt, argonTime, argonMemory, argonThreads, argonKeyLen),
	}
}

// CheckPassword compares in constant time. A hash with absurd parameters (a
// corrupt record) never matches rather than eating the machine.
func CheckPassword(h *statepb.PasswordHash, password string) bool {
	if h == nil || h.Time == 0 || h.Time > 16 || h.MemoryKib > 1<<20 || h.Threads == 0 || h.Threads > 16 || len(h.Hash) == 0 {
		return false
	}
	got := argon2.IDKey([]byte(password), h.Salt, h.Time, h.MemoryKib, uint8(h.Threads), uint32(len(h.Hash)))
	return subtle.ConstantTimeCompare(got, h.Hash) == 1
}

// dummyHash is checked against when the account does not exist, so a wrong
// login id costs the same time as a wrong password.
var dummyHash = HashPassword("e2em: no such account")

// LoginID joins a username and roll number the way the classic commands
// print it: "alice" and "101" make "alice101". The split is unambiguous:
// a username never ends in a digit and a roll number is only digits, so
// the roll number is the login id's trailing digits.
func LoginID(username, roll string) string {
	return api.NormalizeLoginID(username) + roll
}

// ValidateUsername accepts up to 64 bytes of letters, digits, '.', '_' or
// '-' that PRECIS accepts as a username, whose letters come from one
// writing system (so "pаypal" with a Cyrillic а is refused), and that do
// not end in a digit (which would be read as part of the roll number).
func ValidateUsername(name string) error {
	if err := validateName("username", name, func(r rune) bool {
		return unicode.IsLetter(r) || unicode.IsDigit(r) || r == '.' || r == '_' || r == '-'
	}, "letters, digits, '.', '_' and '-'"); err != nil {
		return err
	}
	if last, _ := utf8.DecodeLastRuneInString(name); unicode.IsDigit(last) {
		return errors.New("username must not end in a digit: the roll number follows it in the login id")
	}
	if _, err := precis.UsernameCaseMapped.String(name); err != nil {
		return fmt.Errorf("username %q is not a valid username: %w", name, err)
	}
	if a, b, mixed := mixedScripts(name); mixed {
		return fmt.Errorf("username mixes %s and %s letters; use one writing system so that it cannot pass for another name", a, b)
	}
	return nil
}

// scriptGroups are writing systems used together in one name (Japanese
// mixes Han, Hiragana and Katakana; Korean Hangul and Han).
var scriptGroups = map[string]string{"Han": "CJK", "Hiragana": "CJK", "Katakana": "CJK", "Hangul": "CJK", "Bopomofo": "CJK"}

// mixedScripts names two writing systems whose letters a name mixes.
func mixedScripts(name string) (string, string, bool) {
	first, firstGroup := "", ""
	for _, r := range name {
		if !unicode.IsLetter(r) {
			continue
		}
		script := scriptOf(r)
		group := script
		if g, ok := scriptGroups[script]; ok {
			group = g
		}
		switch {
		case first == "":
			first, firstGroup = script, group
		case group != firstGroup:
			return first, script, true
		}
	}
	return "", "", false
}

func scriptOf(r rune) string {
	for name, table := range unicode.Scripts {
		if name != "Common" && name != "Inherited" && unicode.Is(table, r) {
			return name
		}
	}
	return "Common"
}

// ValidateGroupName accepts up to 64 bytes of printable characters other
// than spaces (the classic commands separate arguments with spaces) and
// '/' (which separates the parts of the coordinators' keys).
func ValidateGroupName(name string) error {
	return validateName("group name", name, func(r rune) bool {
		return unicode.IsPrint(r) && !unicode.IsSpace(r) && r != '/'
	}, "printable characters other than spaces and '/'")
}

func validateName(what, name string, allowed func(rune) bool, allowedText string) error {
	if name == "" {
		return fmt.Errorf("%s is empty", what)
	}
	if !utf8.ValidString(name) {
		return fmt.Errorf("%s is not valid UTF-8 text", what)
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("%s is %d bytes long; the limit is %d", what, len(name), MaxNameLen)
	}
	for _, r := range name {
		switch {
		case unicode.IsControl(r):
			return fmt.Errorf("%s must not contain control characters", what)
		case unicode.IsSpace(r):
			return fmt.Errorf("%s must not contain spaces", what)
		case !allowed(r):
			return fmt.Errorf("%s may contain only %s, not %q", what, allowedText, r)
		}
	}
	return nil
}

// ValidateRollNumber accepts 1–32 ASCII digits.
func ValidateRollNumber(roll string) error {
	if roll == "" {
		return errors.New("roll number is empty")
	}
	if len(roll) > MaxRollLen {
		return fmt.Errorf("roll number is %d characters long; the limit is %d", len(roll), MaxRollLen)
	}
	for _, r := range roll {
		if r < '0' || r > '9' {
			return fmt.Errorf("roll number may contain only digits, not %q", r)
		}
	}
	return nil
}

// Session tokens are stateless so every coordinator can check them:
//
//	base64url(payload) "." base64url(HMAC-SHA256(token key, label || payload))
//	payload = version(1) | cluster id(16) | session id(16) | expiry unix(8) | login id
//
// The token key and cluster id live in the replicated state; log-out adds the
// session id to a replicated revocation list until the expiry.
const (
	tokenVersion  = 1
	tokenLabel    = "e2em session token v1"
	clusterIDLen  = 16
	sessionIDLen  = 16
	tokenFixedLen = 1 + clusterIDLen + sessionIDLen + 8
	maxTokenLen   = 512
)

// Session is what a valid token says.
type Session struct {
	ClusterID []byte
	ID        []byte
	LoginID   string
	Expires   time.Time
}

// Token errors, shown to people as they are.
var (
	ErrBadToken     = errors.New("your session is not valid here (forged, damaged or from another cluster); log in again")
	ErrExpiredToken = errors.New("your session has expired; log in again")
)

// MintToken makes a token for a new session.
func MintToken(key, clusterID []byte, login string, expires time.Time) (string, Session) {
	s := Session{ClusterID: clusterID, ID: make([]byte, sessionIDLen), LoginID: login, Expires: expires}
	rand.Read(s.ID)
	payload := make([]byte, 0, tokenFixedLen+len(login))
	payload = append(payload, tokenVersion)
	payload = append(payload, clusterID...)
	payload = append(payload, s.ID...)
	payload = binary.BigEndian.AppendUint64(payload, uint64(expires.Unix()))
	payload = append(payload, login...)
	enc := base64.RawURLEncoding
	return enc.EncodeToString(payload) + "." + enc.EncodeToString(tokenMAC(key, payload)), s
}

// ParseToken checks a token's MAC, cluster and expiry. It does not check
// revocation (that needs the state).
func ParseToken(key, clusterID []byte, token string, now time.Time) (Session, error) {
	// Only the canonical spelling: base64 decoding skips CR and LF, which
	// would let one token be written many ways.
	if len(token) > maxTokenLen || strings.ContainsAny(token, "\r\n") {
		return Session{}, ErrBadToken
	}
	p, m, found := strings.Cut(token, ".")
	if !found {
		return Session{}, ErrBadToken
	}
	enc := base64.RawURLEncoding.Strict()
	payload, err1 := enc.DecodeString(p)
	mac, err2 := enc.DecodeString(m)
	if err1 != nil || err2 != nil || len(payload) < tokenFixedLen || payload[0] != tokenVersion {
		return Session{}, ErrBadToken
	}
	if !hmac.Equal(mac, tokenMAC(key, payload)) {
		return Session{}, ErrBadToken
	}
	s := Session{
		ClusterID: payload[1 : 1+clusterIDLen],
		ID:        payload[1+clusterIDLen : 1+clusterIDLen+sessionIDLen],
		Expires:   time.Unix(int64(binary.BigEndian.Uint64(payload[tokenFixedLen-8:tokenFixedLen])), 0),
		LoginID:   string(payload[tokenFixedLen:]),
	}
	if !bytes.Equal(s.ClusterID, clusterID) {
		return Session{}, ErrBadToken
	}
	if !now.Before(s.Expires) {
		return Session{}, ErrExpiredToken
	}
	return s, nil
}

func tokenMAC(key, payload []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(tokenLabel))
	h.Write(payload)
	return h.Sum(nil)
}

// Watch tickets let a stream watch an account's key changes (and so its
// comings and goings) only after the caller looked that account up by
// name: ticket = expiry (8 bytes) || HMAC-SHA256(token key, label ||
// watcher || 0 || watched || 0 || expiry)[:16]. Stateless, like tokens.
const (
	watchLabel     = "e2em watch ticket v1"
	watchTicketTTL = 30 * 24 * time.Hour
	watchMACLen    = 16
)

// MintWatchTicket lets watcher watch watched until expires.
func MintWatchTicket(key []byte, watcher, watched string, expires time.Time) []byte {
	exp := binary.BigEndian.AppendUint64(nil, uint64(expires.Unix()))
	return append(exp, watchMAC(key, watcher, watched, exp)...)
}

// CheckWatchTicket says whether ticket lets watcher watch watched now.
func CheckWatchTicket(key []byte, watcher, watched string, ticket []byte, now time.Time) bool {
	if len(ticket) != 8+watchMACLen {
		return false
	}
	exp := ticket[:8]
	if !now.Before(time.Unix(int64(binary.BigEndian.Uint64(exp)), 0)) {
		return false
	}
	return hmac.Equal(ticket[8:], watchMAC(key, watcher, watched, exp))
}

func watchMAC(key []byte, watcher, watched string, exp []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(watchLabel))
	h.Write([]byte(watcher))
	h.Write([]byte{0})
	h.Write([]byte(watched))
	h.Write([]byte{0})
	h.Write(exp)
	return h.Sum(nil)[:watchMACLen]
}

// Device tickets let a device that logged in to an account before be told
// apart from the other people behind its address: failed log-ins from a
// ticketed device count against that device only, so a campus NAT's
// neighbours are never shut out by one person's typos (or a guesser's).
// Only the right password earns one. ticket = device id (16 bytes) ||
// expiry (8) || HMAC-SHA256(token key, label || login || 0 || device id ||
// expiry)[:16]. Stateless, like tokens; renewed at each log-in.
const (
	deviceLabel     = "e2em device ticket v1"
	deviceIDLen     = 16
	deviceTicketLen = deviceIDLen + 8 + 16
	// DeviceTicketTTL is how long a device stays known without logging in.
	DeviceTicketTTL = 180 * 24 * time.Hour
)

// MintDeviceTicket names device (deviceIDLen bytes; a new random one when
// nil) as having logged in to login, until expires.
func MintDeviceTicket(key []byte, login string, device []byte, expires time.Time) []byte {
	if len(device) != deviceIDLen {
		device = make([]byte, deviceIDLen)
		rand.Read(device)
	}
	t := append(append([]byte(nil), device...), binary.BigEndian.AppendUint64(nil, uint64(expires.Unix()))...)
	return append(t, deviceMAC(key, login, t)...)
}

// CheckDeviceTicket returns the device id a ticket names for login, or
// nil when it is not a valid, unexpired ticket for that account.
func CheckDeviceTicket(key []byte, login string, ticket []byte, now time.Time) []byte {
	if len(ticket) != deviceTicketLen {
		return nil
	}
	body := ticket[:deviceIDLen+8]
	if !now.Before(time.Unix(int64(binary.BigEndian.Uint64(body[deviceIDLen:])), 0)) {
		return nil
	}
	if !hmac.Equal(ticket[deviceIDLen+8:], deviceMAC(key, login, body)) {
		return nil
	}
	return body[:deviceIDLen]
}

func deviceMAC(key []byte, login string, body []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(deviceLabel))
	h.Write([]byte(login))
	h.Write([]byte{0})
	h.Write(body)
	return h.Sum(nil)[:16]
}
