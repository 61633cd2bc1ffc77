// Package command owns the classic command language: one parser for the
// desktop's command bar and the headless client. Command names are case
// insensitive; a message is the rest of the line, spaces and all.
package command

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"
)

// Kind names a command.
type Kind int

// The commands.
const (
	SignUp Kind = iota + 1
	Login
	Send
	SendFile
	SendGroup
	SendGroupFile
	Create
	Join
	Leave
	Members
	ShowMyGroups
	List
	History
	Search
	Verify
	Trust
	Transfers
	Cancel
	Logout
	Help
	Quit
)

// Command is one parsed line.
type Command struct {
	Kind     Kind
	Username string   // Sign up
	Roll     string   // Sign up
	LoginID  string   // Login
	Password string   // Sign up, Login
	To       string   // Send, Send_file, History, Verify, Trust (a contact); Cancel (a transfer id)
	Groups   []string // Send_group*, and the one group of Create/Join/Leave/Members
	Text     string   // Send*, Search: the rest of the line; Trust: the safety number
	Path     string   // Send_file, Send_group_File
	Count    int      // History
}

// Usage is the one-line syntax of each command, as Help prints it.
var Usage = map[Kind]string{
	SignUp:        "Sign up <username> <rollnumber> <password>",
	Login:         "Login <username+rollnumber> <password>",
	Send:          "Send <recipient> <message>",
	SendFile:      "Send_file <file> <recipient>",
	SendGroup:     "Send_group <n> <group1> ... <groupN> <message>",
	SendGroupFile: "Send_group_File <file> <n> <group1> ... <groupN>",
	Create:        "Create <group>",
	Join:          "Join <group>",
	Leave:         "Leave <group>",
	Members:       "Members <group>",
	ShowMyGroups:  "Show_my_groups",
	List:          "List",
	History:       "History <contact|group> [n]",
	Search:        "Search <text>",
	Verify:        "Verify <contact>",
	Trust:         "Trust <contact> <safety number>",
	Transfers:     "Transfers",
	Cancel:        "Cancel <transfer id>",
	Logout:        "Logout",
	Help:          "Help",
	Quit:          "Quit",
}

// Order is how Help lists the commands.
var Order = []Kind{SignUp, Login, Send, SendGroup, SendFile, SendGroupFile, Transfers, Cancel,
	Create, Join, Leave, Members, ShowMyGroups, List, History, Search, Verify, Trust, Logout, Help, Quit}

var names = map[string]Kind{
	"login": Login, "send": Send, "send_file": SendFile, "send_group": SendGroup,
	"send_group_file": SendGroupFile, "create": Create, "join": Join, "leave": Leave,
	"members": Members, "show_my_groups": ShowMyGroups, "list": List, "history": History,
	"search": Search, "verify": Verify, "trust": Trust, "logout": Logout, "help": Help,
	"transfers": Transfers, "cancel": Cancel,
	"quit": Quit, "exit": Quit,
}

// MaxLine bounds one command line (a message is at most this long).
const MaxLine = 64 << 10

// UsageError says what was wrong and how the command is written.
type UsageError struct {
	Problem string
	Usage   string
}

func (e *UsageError) Error() string {
	if e.Usage == "" {
		return e.Problem
	}
	return e.Problem + "; usage: " + e.Usage
}

// ErrEmpty is returned for a blank line.
var ErrEmpty = errors.New("empty line")

// Parse reads one line.
func Parse(line string) (*Command, error) {
	line = strings.TrimRight(line, "\r\n")
	if len(line) > MaxLine {
		return nil, &UsageError{Problem: fmt.Sprintf("the line is longer than %d bytes", MaxLine)}
	}
	if strings.TrimSpace(line) == "" {
		return nil, ErrEmpty
	}
	word, rest := next(line)
	lower := strings.ToLower(word)
	var kind Kind
	if lower == "sign" {
		w2, r2 := next(rest)
		if strings.ToLower(w2) != "up" {
			return nil, unknown(word)
		}
		kind, rest = SignUp, r2
	} else if lower == "signup" || lower == "sign_up" {
		kind = SignUp
	} else if k, ok := names[lower]; ok {
		kind = k
	} else {
		return nil, unknown(word)
	}
	c := &Command{Kind: kind}
	bad := func(problem string) (*Command, error) {
		return nil, &UsageError{Problem: problem, Usage: Usage[kind]}
	}
	args := strings.Fields(rest)
	switch kind {
	case SignUp:
		if len(args) != 3 {
			return bad("give a username, a roll number and a password")
		}
		c.Username, c.Roll, c.Password = args[0], args[1], args[2]
	case Login:
		if len(args) != 2 {
			return bad("give your login id and password")
		}
		c.LoginID, c.Password = NormalizeRecipient(args[0]), args[1]
		if c.LoginID == "" {
			return bad("give your login id and password")
		}
	case Send:
		to, text := next(rest)
		if NormalizeRecipient(to) == "" || strings.TrimSpace(text) == "" {
			return bad("give a recipient and a message")
		}
		c.To, c.Text = NormalizeRecipient(to), strings.TrimLeftFunc(text, unicode.IsSpace)
	case SendFile:
		// The file first, as the original program had it; a path with
		// spaces may be quoted, or is everything before the recipient.
		path, after, err := filePath(rest, true)
		if err != nil {
			return bad(err.Error())
		}
		to := strings.TrimSpace(after)
		if path == "" || to == "" || strings.ContainsFunc(to, unicode.IsSpace) || NormalizeRecipient(to) == "" {
			return bad("give the file, then the recipient")
		}
		c.To, c.Path = NormalizeRecipient(to), path
	case SendGroupFile:
		if reversedGroupFile(args) {
			return bad("the file comes first, then how many groups, then the groups")
		}
		path, groups, err := groupFileArgs(rest)
		if err != nil {
			return bad(err.Error())
		}
		c.Path, c.Groups = path, groups
	case Transfers:
		if len(args) != 0 {
			return bad("this command takes no arguments")
		}
	case Cancel:
		if len(args) != 1 {
			return bad("give the id of one transfer (Transfers lists them)")
		}
		c.To = strings.ToLower(args[0])
	case SendGroup:
		nWord, after := next(rest)
		n, err := strconv.Atoi(nWord)
		if err != nil || n < 1 || n > 64 {
			return bad("the first argument is how many groups follow (1 to 64)")
		}
		for i := 0; i < n; i++ {
			var g string
			g, after = next(after)
			if g == "" {
				return bad(fmt.Sprintf("%d groups announced, %d given", n, i))
			}
			c.Groups = append(c.Groups, g)
		}
		if strings.TrimSpace(after) == "" {
			return bad("give the message after the groups")
		}
		c.Text = strings.TrimLeftFunc(after, unicode.IsSpace)
	case Create, Join, Leave, Members:
		if len(args) != 1 {
			return bad("give one group name (no spaces)")
		}
		c.Groups = []string{args[0]}
	case History:
		if len(args) < 1 || len(args) > 2 {
			return bad("give a contact or group, and optionally how many messages")
		}
		c.To, c.Count = NormalizeRecipient(args[0]), 20
		if c.To == "" {
			return bad("give a contact or group")
		}
		if len(args) == 2 {
			n, err := strconv.Atoi(args[1])
			if err != nil || n < 1 || n > 10000 {
				return bad("the count must be a number from 1 to 10000")
			}
			c.Count = n
		}
	case Search:
		if strings.TrimSpace(rest) == "" {
			return bad("give the text to look for")
		}
		c.Text = strings.TrimSpace(rest)
	case Verify:
		if len(args) != 1 || NormalizeRecipient(args[0]) == "" {
			return bad("give one contact")
		}
		c.To = NormalizeRecipient(args[0])
	case Trust:
		if len(args) < 2 || NormalizeRecipient(args[0]) == "" {
			return bad("give the contact and the safety number you compared (Verify shows it)")
		}
		c.To = NormalizeRecipient(args[0])
		for _, group := range args[1:] {
			if strings.Trim(group, "0123456789") != "" {
				return bad("a safety number is only digits, in groups of five")
			}
		}
		c.Text = strings.Join(args[1:], " ")
	case ShowMyGroups, List, Logout, Help, Quit:
		if len(args) != 0 {
			return bad("this command takes no arguments")
		}
	}
	return c, nil
}

// filePath reads a path at the start of s: in double quotes, or (with
// lastWordAfter) everything up to the last word, or else the first word.
// It returns what follows the path.
func filePath(s string, lastWordAfter bool) (path, rest string, err error) {
	s = strings.TrimLeftFunc(s, unicode.IsSpace)
	if strings.HasPrefix(s, `"`) {
		end := strings.Index(s[1:], `"`)
		if end < 0 {
			return "", "", errors.New("the file name's quote is not closed")
		}
		return s[1 : end+1], s[end+2:], nil
	}
	if lastWordAfter {
		t := strings.TrimRightFunc(s, unicode.IsSpace)
		i := strings.LastIndexFunc(t, unicode.IsSpace)
		if i < 0 {
			return t, "", nil
		}
		return strings.TrimRightFunc(t[:i], unicode.IsSpace), t[i+1:], nil
	}
	word, rest := next(s)
	return word, rest, nil
}

// groupFileArgs reads "<file> <n> <group1> ... <groupN>": the groups are
// the last n words, n the word before them, and the file everything before
// that (or a quoted path).
func groupFileArgs(rest string) (string, []string, error) {
	rest = strings.TrimSpace(rest)
	if strings.HasPrefix(rest, `"`) {
		path, after, err := filePath(rest, false)
		if err != nil {
			return "", nil, err
		}
		words := strings.Fields(after)
		if len(words) == 0 {
			return "", nil, errors.New("give how many groups follow the file, then the groups")
		}
		n, err := strconv.Atoi(words[0])
		if err != nil || n < 1 || n > 64 {
			return "", nil, errors.New("after the file comes how many groups follow (1 to 64)")
		}
		if len(words)-1 != n {
			return "", nil, fmt.Errorf("%d groups announced, %d given", n, len(words)-1)
		}
		return path, words[1:], nil
	}
	words := strings.Fields(rest)
	for n := 1; n <= 64 && n+2 <= len(words); n++ {
		if words[len(words)-n-1] == strconv.Itoa(n) {
			cut := len(words) - n - 1
			return strings.Join(words[:cut], " "), words[cut+1:], nil
		}
	}
	return "", nil, errors.New("give the file, how many groups follow, and the groups")
}

// reversedGroupFile spots the order this program's first versions taught,
// "<n> <groups...> <file>".
func reversedGroupFile(args []string) bool {
	if len(args) < 3 {
		return false
	}
	n, err := strconv.Atoi(args[0])
	return err == nil && n >= 1 && len(args) == n+2
}

func unknown(word string) error {
	return &UsageError{Problem: fmt.Sprintf("unknown command %q; type Help for the list", word)}
}

// next splits off the first space-separated word; the rest keeps its inner
// spacing but loses the one separator.
func next(s string) (word, rest string) {
	s = strings.TrimLeftFunc(s, unicode.IsSpace)
	i := strings.IndexFunc(s, unicode.IsSpace)
	if i < 0 {
		return s, ""
	}
	rest = s[i:]
	if len(rest) > 0 {
		rest = rest[1:]
	}
	return s[:i], rest
}

// NormalizeRecipient accepts the original program's spellings of a
// person: "alice+101" is the login id alice101 (usernames cannot contain
// '+'), and "<alice||101>" or "alice||101" names one by username or roll
// number, whichever matches. Angle brackets around a name are dropped.
func NormalizeRecipient(s string) string {
	s = strings.TrimSuffix(strings.TrimPrefix(s, "<"), ">")
	if strings.Contains(s, "+") {
		s = strings.ReplaceAll(s, "+", "")
	}
	return strings.ToLower(s)
}

// Alternatives splits "alice||101" into the names it offers.
func Alternatives(s string) []string {
	var out []string
	for _, p := range strings.Split(s, "||") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// HelpText lists every command's syntax.
func HelpText() string {
	var b strings.Builder
	for _, k := range Order {
		b.WriteString(Usage[k])
		b.WriteByte('\n')
	}
	return b.String()
}
