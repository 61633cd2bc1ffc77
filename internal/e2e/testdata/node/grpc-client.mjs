// A gRPC client that is not grpc-go: grpc-js under Node.js, with the API
// loaded at run time from coord.proto (argv[4]). It talks to the balancer at
// argv[2], trusting the cluster CA in argv[3], and prints one JSON object a
// line: the sign-up, a refused sign-up's status, a lookup, "subscribed" when
// the Events stream's headers arrive, then the first mail event and the mail
// it fetches, after which it exits.
import { readFileSync } from 'node:fs'
import grpc from '@grpc/grpc-js'
import protoLoader from '@grpc/proto-loader'

const [lb, caFile, protoFile] = process.argv.slice(2)
const say = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const def = protoLoader.loadSync(protoFile, { longs: String, defaults: true, oneofs: true })
const { Coordinator } = grpc.loadPackageDefinition(def).e2em.coord.v1
const client = new Coordinator(lb, grpc.credentials.createSsl(readFileSync(caFile)))
const call = (method, req, md = new grpc.Metadata()) => new Promise((resolve, reject) =>
  client[method](req, md, { deadline: Date.now() + 20000 }, (err, res) => err ? reject(err) : resolve(res)))

try {
  const signed = await call('SignUp', { username: 'grpcjs', rollNumber: '77', password: 'password123' })
  say({ signedUp: signed.loginId })
  try {
    await call('SignUp', { username: 'grpc js', rollNumber: '77', password: 'password123' })
    say({ error: 'a user name with a space was accepted' })
  } catch (err) {
    say({ refused: { code: err.code, details: err.details } })
  }
  const session = await call('LogIn', { loginId: signed.loginId, password: 'password123' })
  const md = new grpc.Metadata()
  md.set('authorization', 'Bearer ' + session.token)
  const found = await call('LookUp', { query: 'gopher78' }, md)
  say({ found: found.matches.map(m => m.loginId) })

  const events = client.Events({}, md)
  events.on('metadata', () => say({ subscribed: true }))
  events.on('error', (err) => {
    if (err.code === grpc.status.CANCELLED) return // our own cancel, below
    say({ error: `events: ${err.code} ${err.details}` })
    process.exit(1)
  })
  events.on('data', async (ev) => {
    if (ev.kind !== 'mail') return
    say({ mailEvent: ev.mail.from })
    const box = await call('FetchMail', {}, md)
    say({ mail: box.mail.map(m => ({ from: m.from, envelope: Buffer.from(m.envelope).toString() })) })
    events.cancel()
    client.close()
  })
} catch (err) {
  say({ error: `${err.code} ${err.details ?? err}` })
  process.exit(1)
}
