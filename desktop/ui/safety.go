package ui

import (
	"context"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/dialog"
	"fyne.io/fyne/v2/widget"
)

// keyBanner warns, above a conversation, that the person's identity key
// changed: their messages wait until you compare safety numbers and trust
// the new key.
type keyBanner struct {
	app     *App
	peer    string
	text    *widget.Label
	verify  *widget.Button
	trust   *widget.Button
	content *fyne.Container
}

func newKeyBanner(app *App) *keyBanner {
	b := &keyBanner{app: app, text: widget.NewLabel("")}
	b.text.Wrapping = fyne.TextWrapWord
	b.verify = widget.NewButton("Verify", func() { b.app.showSafetyNumber(b.peer, nil) })
	b.trust = widget.NewButton("Trust the new key", func() { b.app.showSafetyNumber(b.peer, b.trustKey) })
	b.trust.Importance = widget.DangerImportance
	b.content = container.NewBorder(nil, nil, nil, container.NewHBox(b.verify, b.trust), b.text)
	b.content.Hide()
	return b
}

// show shows the banner for peer, or hides it.
func (b *keyBanner) show(peer string, changed bool) {
	b.peer = peer
	if !changed || peer == "" {
		b.content.Hide()
		return
	}
	b.text.SetText(peer + "'s identity key changed. Messages to them wait until you compare safety numbers (Verify) and trust the new key.")
	b.content.Show()
}

// trustKey trusts peer's new key under the safety number the person saw
// (the engine refuses it if the key changed again meanwhile).
func (b *keyBanner) trustKey(peer, safetyNumber string) {
	b.app.background(func(ctx context.Context) error { return b.app.eng.Trust(ctx, peer, safetyNumber) }, func(err error) {
		if err != nil {
			b.app.chats.notice(words(err))
			return
		}
		b.content.Hide()
		b.app.chats.notice("Trusted " + peer + "'s new key; the waiting messages go now.")
		b.app.chats.reload()
	})
}

// showSafetyNumber shows the safety number to compare with peer; with
// trust, the dialog asks whether they match and trusts that number.
func (app *App) showSafetyNumber(peer string, trust func(peer, safetyNumber string)) {
	var sn string
	app.background(func(ctx context.Context) (err error) {
		sn, err = app.eng.SafetyNumber(ctx, peer)
		return err
	}, func(err error) {
		if err != nil {
			app.chats.notice(words(err))
			return
		}
		number := widget.NewLabelWithStyle(sn, fyne.TextAlignCenter, fyne.TextStyle{Monospace: true})
		number.Wrapping = fyne.TextWrapWord
		content := container.NewVBox(
			widget.NewLabel("Compare these digits with "+peer+", in person or on a call. If they match, nobody is between you."),
			number)
		if trust == nil {
			dialog.ShowCustom("Safety number with "+peer, "Close", content, app.win)
			return
		}
		dialog.ShowCustomConfirm("Safety number with "+peer, "They match: trust", "Not now", content, func(match bool) {
			if match {
				trust(peer, sn)
			}
		}, app.win)
	})
}
