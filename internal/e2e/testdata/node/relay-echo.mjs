// A js-libp2p peer for e2em's interoperability test: it reserves a slot on
// the coordinator relay given as argv[2] (circuit relay v2), answers
// /e2em-interop/echo/1.0.0, prints {"peer":..., "circuit":...} once the
// reservation holds, and then takes commands from standard input:
//   dial <multiaddr>   open an echo stream to that address and print
//                      {"echoed": <text>} or {"error": <text>}
import { createInterface } from 'node:readline'

// libp2p 3 calls Promise.withResolvers, which Node.js has from version 22;
// this machine's Node.js is 20.
Promise.withResolvers ??= function () {
  let resolve, reject
  const promise = new this((res, rej) => { resolve = res; reject = rej })
  return { promise, resolve, reject }
}
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { multiaddr } from '@multiformats/multiaddr'

const echo = '/e2em-interop/echo/1.0.0'
const say = (o) => process.stdout.write(JSON.stringify(o) + '\n')

const node = await createLibp2p({
  addresses: { listen: [process.argv[2] + '/p2p-circuit'] },
  transports: [tcp(), circuitRelayTransport()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: { identify: identify() }
})

await node.handle(echo, async (stream) => {
  for await (const chunk of stream) {
    stream.send(chunk)
  }
  await stream.close()
}, { runOnLimitedConnection: true })

const circuit = () => node.getMultiaddrs().map(String).find(a => a.includes('/p2p-circuit'))
while (circuit() === undefined) {
  await new Promise(resolve => node.addEventListener('self:peer:update', resolve, { once: true }))
}
say({ peer: node.peerId.toString(), circuit: circuit() })

for await (const line of createInterface({ input: process.stdin })) {
  const [cmd, addr] = line.trim().split(/\s+/)
  if (cmd !== 'dial') continue
  try {
    const stream = await node.dialProtocol(multiaddr(addr), echo, { runOnLimitedConnection: true, signal: AbortSignal.timeout(20000) })
    const text = 'hello from js-libp2p'
    stream.send(new TextEncoder().encode(text))
    let got = ''
    for await (const chunk of stream) {
      got += new TextDecoder().decode(chunk.subarray())
      if (got.length >= text.length) break
    }
    await stream.close()
    say({ echoed: got })
  } catch (err) {
    say({ error: String(err) })
  }
}
await node.stop()
