package ui

import (
	"context"
	"errors"
	"sort"
	"strings"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/driver/desktop"
	"fyne.io/fyne/v2/widget"

	"github.com/e2em/e2em/desktop/engine"
	"github.com/e2em/e2em/desktop/engine/command"
)

// commandBarShortcut opens the command bar.
var commandBarShortcut = &desktop.CustomShortcut{KeyName: fyne.KeyK, Modifier: fyne.KeyModifierShortcutDefault}

// commandBar takes the classic commands verbatim ("Send bob102 hi",
// "Join g1", "List", …), through the engine's Do, as the headless client
// does; it completes command names and the people and groups you have
// conversations with.
type commandBar struct {
	app    *App
	entry  *completingEntry
	answer *widget.Label
	popup  *widget.PopUp
}

func newCommandBar(app *App) *commandBar {
	b := &commandBar{app: app, answer: widget.NewLabel("")}
	b.entry = newCompletingEntry(b.Complete, b.close)
	b.entry.SetPlaceHolder("A command: Send bob102 hi · Send_group 2 g1 g2 hi · Join g1 · List · Help (Tab completes)")
	b.entry.OnSubmitted = b.run
	b.answer.Wrapping = fyne.TextWrapWord
	return b
}

func (b *commandBar) open() {
	if b.popup == nil {
		content := widget.NewCard("", "", nil)
		content.SetContent(container.NewVBox(b.entry, b.answer))
		b.popup = widget.NewModalPopUp(content, b.app.win.Canvas())
	}
	b.popup.Resize(fyne.NewSize(b.app.win.Canvas().Size().Width*0.8, 160))
	b.popup.Show()
	b.app.win.Canvas().Focus(b.entry)
}

func (b *commandBar) close() {
	if b.popup != nil {
		b.popup.Hide()
	}
}

// run parses and runs one command, and shows its answer.
func (b *commandBar) run(line string) {
	cmd, err := command.Parse(line)
	if errors.Is(err, command.ErrEmpty) {
		b.close()
		return
	}
	if err != nil {
		b.answer.SetText(err.Error())
		return
	}
	var r engine.Result
	b.answer.SetText("…")
	b.app.background(func(ctx context.Context) (err error) {
		r, err = b.app.eng.Do(ctx, cmd)
		return err
	}, func(err error) {
		if err != nil {
			b.answer.SetText(words(err))
			return
		}
		b.entry.SetText("")
		b.answer.SetText(r.Text)
		switch cmd.Kind {
		case command.Login:
			b.app.showChats()
		case command.Send:
			b.app.chats.reload()
			b.app.chats.openPeer(cmd.To)
		case command.SendGroup, command.Join, command.Create, command.Leave:
			b.app.chats.reload()
		}
	})
}

// Complete returns what the word being typed could be: command names
// first on the line, else people and groups from the conversations.
func (b *commandBar) Complete(line string) []string {
	words := strings.Fields(line)
	typingNew := line == "" || strings.HasSuffix(line, " ")
	var prefix string
	if !typingNew && len(words) > 0 {
		prefix = strings.ToLower(words[len(words)-1])
	}
	var pool []string
	if len(words) == 0 || (len(words) == 1 && !typingNew) {
		for _, k := range command.Order {
			name, _, _ := strings.Cut(command.Usage[k], " <")
			pool = append(pool, name)
		}
	} else {
		convs, _ := b.app.eng.Conversations()
		for _, c := range convs {
			if c.Peer != "" {
				pool = append(pool, c.Peer)
			} else {
				pool = append(pool, c.Group)
			}
		}
	}
	var out []string
	for _, p := range pool {
		if strings.HasPrefix(strings.ToLower(p), prefix) {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

// completingEntry is a one-line entry where Tab completes the word being
// typed: at once when one thing fits, else as far as all that fit agree.
type completingEntry struct {
	widget.Entry
	complete func(string) []string
	escape   func()
}

func newCompletingEntry(complete func(string) []string, escape func()) *completingEntry {
	e := &completingEntry{complete: complete, escape: escape}
	e.ExtendBaseWidget(e)
	return e
}

// AcceptsTab keeps Tab for completion rather than moving the focus.
func (e *completingEntry) AcceptsTab() bool { return true }

// TypedKey completes on Tab and closes on Escape.
func (e *completingEntry) TypedKey(k *fyne.KeyEvent) {
	if k.Name == fyne.KeyEscape {
		e.escape()
		return
	}
	if k.Name != fyne.KeyTab {
		e.Entry.TypedKey(k)
		return
	}
	options := e.complete(e.Text)
	if len(options) == 0 {
		return
	}
	common := options[0]
	for _, o := range options[1:] {
		for !strings.HasPrefix(strings.ToLower(o), strings.ToLower(common)) {
			common = common[:len(common)-1]
		}
	}
	head := e.Text
	if i := strings.LastIndexByte(head, ' '); i >= 0 {
		head = head[:i+1]
	} else {
		head = ""
	}
	text := head + common
	if len(options) == 1 {
		text += " "
	}
	e.SetText(text)
	e.CursorColumn = len([]rune(text))
	e.Refresh()
}
