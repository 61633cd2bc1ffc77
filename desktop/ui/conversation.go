package ui

import (
	"context"
	"strings"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/driver/desktop"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"

	"github.com/e2em/e2em/desktop/engine"
)

// pageSize is how many messages a conversation loads at a time; the list
// draws only the rows on screen, so a long conversation costs its pages,
// not its rows.
const pageSize = 200

// conversationView shows one conversation: its messages, newest at the
// bottom, and a composer.
type conversationView struct {
	app *App

	conv      engine.Conversation
	messages  []engine.Message
	title     *widget.Label
	list      *widget.List
	older     *widget.Button
	composer  *composer
	attachBtn *widget.Button
	safetyBtn *widget.Button
	banner    *keyBanner
	transfers *transfersStrip
	content   fyne.CanvasObject
}

func newConversationView(app *App) *conversationView {
	v := &conversationView{app: app, title: widget.NewLabelWithStyle("Choose a conversation, or start one with Ctrl+K.", fyne.TextAlignLeading, fyne.TextStyle{Bold: true})}
	v.list = widget.NewList(
		func() int { return len(v.messages) },
		func() fyne.CanvasObject {
			meta := widget.NewLabel("")
			meta.TextStyle = fyne.TextStyle{Italic: true}
			body := widget.NewLabel("")
			body.Wrapping = fyne.TextWrapWord
			open := widget.NewButtonWithIcon("Open", theme.FileIcon(), nil)
			open.Hide()
			return container.NewVBox(meta, body, container.NewHBox(open))
		},
		func(i widget.ListItemID, o fyne.CanvasObject) {
			if i >= len(v.messages) {
				return
			}
			m := v.messages[i]
			rows := o.(*fyne.Container).Objects
			rows[0].(*widget.Label).SetText(metaLine(m))
			rows[1].(*widget.Label).SetText(m.Body)
			open := rows[2].(*fyne.Container).Objects[0].(*widget.Button)
			if m.File != nil && m.File.Path != "" {
				path := m.File.Path
				open.OnTapped = func() { v.app.openFile(path) }
				open.Show()
			} else {
				open.Hide()
			}
			v.list.SetItemHeight(i, o.MinSize().Height)
		})
	v.older = widget.NewButton("Older messages", v.loadOlder)
	v.older.Hide()
	v.composer = newComposer(v.send)
	v.composer.Disable()
	v.attachBtn = widget.NewButtonWithIcon("", theme.MailAttachmentIcon(), v.attach)
	v.attachBtn.Disable()
	v.transfers = newTransfersStrip(app)
	bottom := container.NewVBox(v.transfers.box, container.NewBorder(nil, nil, nil, v.attachBtn, v.composer))
	v.banner = newKeyBanner(app)
	v.safetyBtn = widget.NewButton("Safety number", func() { app.showSafetyNumber(v.conv.Peer, nil) })
	v.safetyBtn.Hide()
	header := container.NewBorder(nil, nil, nil, v.safetyBtn, v.title)
	v.content = container.NewBorder(container.NewVBox(header, v.banner.content, v.older), bottom, nil, nil, v.list)
	app.win.SetOnDropped(v.dropped)
	return v
}

// metaLine is a message's time, sender and, for yours, delivery state.
func metaLine(m engine.Message) string {
	who := m.From
	if m.Outgoing {
		who = "you"
	}
	line := m.Sent.Format("Jan 2 15:04") + " · " + who
	if m.Outgoing {
		line += " · " + stateText(m)
	}
	if m.File != nil && m.File.Path != "" {
		line += " · saved to " + m.File.Path
	}
	return line
}

// stateText is where one of yours is, in words: queued, sent (and how),
// waiting in the mailbox, delivered.
func stateText(m engine.Message) string {
	switch {
	case m.State == engine.StateSent && m.Via == engine.ViaMailbox:
		return "waiting in the mailbox"
	case m.State == engine.StateSent && m.Via == engine.ViaRelay:
		return "sent via a relay"
	case m.State == engine.StateDelivered && m.Via == engine.ViaRelay:
		return "delivered via a relay"
	}
	return string(m.State)
}

// show switches to conv.
func (v *conversationView) show(conv engine.Conversation) {
	v.conv = conv
	v.title.SetText(strings.TrimPrefix(convTitle(conv), "○ "))
	v.messages = nil
	v.composer.Enable()
	v.attachBtn.Enable()
	v.banner.show(conv.Peer, conv.KeyChanged)
	if conv.Peer != "" {
		v.safetyBtn.Show()
	} else {
		v.safetyBtn.Hide()
	}
	v.reload()
	v.list.ScrollToBottom()
}

// reload reads the newest page again (new messages, new states).
func (v *conversationView) reload() {
	if v.conv.ID == "" {
		return
	}
	page, err := v.app.eng.HistoryPage(v.conv.ID, 0, max(pageSize, len(v.messages)))
	if err != nil {
		v.app.chats.notice(words(err))
		return
	}
	atEnd := len(v.messages) == 0 || len(page) > 0 && page[len(page)-1].Seq != v.messages[len(v.messages)-1].Seq
	v.messages = page
	v.older.Hidden = len(page) < max(pageSize, len(v.messages))
	v.older.Refresh()
	v.list.Refresh()
	if atEnd {
		v.list.ScrollToBottom()
	}
}

// loadOlder puts the page before the first shown above it.
func (v *conversationView) loadOlder() {
	if len(v.messages) == 0 {
		return
	}
	page, err := v.app.eng.HistoryPage(v.conv.ID, v.messages[0].Seq, pageSize)
	if err != nil {
		v.app.chats.notice(words(err))
		return
	}
	if len(page) < pageSize {
		v.older.Hide()
	}
	v.messages = append(page, v.messages...)
	v.list.Refresh()
	v.list.ScrollTo(len(page))
}

// send sends what the composer holds to this conversation.
func (v *conversationView) send(text string) {
	if strings.TrimSpace(text) == "" || v.conv.ID == "" {
		return
	}
	conv := v.conv
	v.composer.SetText("")
	v.app.background(func(ctx context.Context) error {
		if conv.Peer != "" {
			_, err := v.app.eng.Send(ctx, conv.Peer, text)
			return err
		}
		_, err := v.app.eng.SendGroup(ctx, []string{conv.Group}, text)
		return err
	}, func(err error) {
		if err != nil {
			v.app.chats.notice("Not sent: " + words(err))
			v.composer.SetText(text)
			return
		}
		v.app.chats.reload()
	})
}

// composer is a multi-line entry where Enter sends and Shift+Enter starts
// a new line.
type composer struct {
	widget.Entry
	onSend func(string)
	shift  bool
}

func newComposer(onSend func(string)) *composer {
	c := &composer{onSend: onSend}
	c.MultiLine = true
	c.Wrapping = fyne.TextWrapWord
	c.SetPlaceHolder("Write a message; Enter sends, Shift+Enter starts a new line")
	c.ExtendBaseWidget(c)
	return c
}

// KeyDown notes Shift (and lets the entry see every key).
func (c *composer) KeyDown(k *fyne.KeyEvent) {
	if k.Name == desktop.KeyShiftLeft || k.Name == desktop.KeyShiftRight {
		c.shift = true
	}
	c.Entry.KeyDown(k)
}

// KeyUp notes Shift released.
func (c *composer) KeyUp(k *fyne.KeyEvent) {
	if k.Name == desktop.KeyShiftLeft || k.Name == desktop.KeyShiftRight {
		c.shift = false
	}
	c.Entry.KeyUp(k)
}

// TypedKey sends on Enter; Shift+Enter is a new line (the entry's own
// Enter, with no OnSubmitted set).
func (c *composer) TypedKey(k *fyne.KeyEvent) {
	if (k.Name == fyne.KeyReturn || k.Name == fyne.KeyEnter) && !c.shift {
		c.onSend(c.Text)
		return
	}
	c.Entry.TypedKey(k)
}
