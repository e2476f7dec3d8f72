// An SDK-like Node client: fetch through undici's ProxyAgent (what
// NODE_USE_ENV_PROXY=1 does on newer Node), with a placeholder API key.
// Usage: node proxy_fetch.mjs <url>; prints {"status": ..., "body": ...}.
// The proxy comes from HTTPS_PROXY or HTTP_PROXY; the CA from NODE_EXTRA_CA_CERTS.
import { ProxyAgent, fetch } from 'undici';

const url = process.argv[2];
if (!url) {
  console.error('usage: node proxy_fetch.mjs <url>');
  process.exit(2);
}
const proxy = url.startsWith('https:')
  ? process.env.HTTPS_PROXY || process.env.https_proxy
  : process.env.HTTP_PROXY || process.env.http_proxy;
if (!proxy) {
  console.error('no HTTP_PROXY / HTTPS_PROXY in the environment');
  process.exit(2);
}
const dispatcher = new ProxyAgent(proxy);
const response = await fetch(url, {
  dispatcher,
  method: 'POST',
  headers: { authorization: 'Bearer placeholder', 'content-type': 'application/json' },
  body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] }),
  signal: AbortSignal.timeout(30_000),
});
const body = await response.text();
console.log(JSON.stringify({ status: response.status, body }));
await dispatcher.close();
