// Server URLs per transport (crates/haip-client/src/url.rs).

import { DEFAULT_PATHS, Transport } from './constants.js';
import { HaipError } from './errors.js';

/**
 * The URL of `transport` on the server `url`: the scheme follows the transport (http <->
 * ws, https <-> wss), a URL with no path gets the transport's default path, and `query`
 * pairs are appended, percent-encoded. Throws INVALID_URL.
 */
export function urlFor(url, transport, query = [], paths = DEFAULT_PATHS) {
  const bad = (reason) => new HaipError('INVALID_URL', `invalid server URL ${JSON.stringify(url)}: ${reason}`);
  const m = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/(.*)$/.exec(String(url));
  if (!m) throw bad('no scheme');
  let secure;
  switch (m[1].toLowerCase()) {
    case 'http': case 'ws': secure = false; break;
    case 'https': case 'wss': secure = true; break;
    default: throw bad('the scheme must be http, https, ws or wss');
  }
  let rest = m[2];
  if (rest === '' || rest.startsWith('/')) throw bad('no host');
  const scheme = transport === Transport.WEBSOCKET ? (secure ? 'wss' : 'ws') : (secure ? 'https' : 'http');
  // A bare host (or host/) gets the transport's path, as the CLI's --url does.
  const pathStart = rest.search(/[/?#]/);
  const path = pathStart < 0 ? '' : rest.slice(pathStart).split(/[?#]/)[0];
  if (path === '' || path === '/') {
    const host = pathStart < 0 ? rest : rest.slice(0, pathStart);
    const tail = pathStart < 0 ? '' : rest.slice(pathStart).replace(/^\/?/, '');
    rest = host + (paths[transport] || '') + tail;
  }
  let out = `${scheme}://${rest}`;
  for (const [key, value] of query) {
    out += out.includes('?') ? '&' : '?';
    out += `${encodeURIComponent(key)}=${encodeURIComponent(value)}`;
  }
  return out;
}

/** Whether a URL names a path (beyond `/`). */
export function hasPath(url) {
  const rest = String(url).replace(/^[A-Za-z][A-Za-z0-9+.-]*:\/\//, '');
  const i = rest.search(/[/?#]/);
  if (i < 0) return false;
  const path = rest.slice(i).split(/[?#]/)[0];
  return path !== '' && path !== '/';
}

/** `http://h/haip/sse?x` -> `http://h/haip/messages`: the upstream beside a stream path. */
export function siblingUrl(url, leaf) {
  const base = url.split('?')[0];
  const hostStart = base.indexOf('://') < 0 ? 0 : base.indexOf('://') + 3;
  const slash = base.slice(hostStart).lastIndexOf('/');
  if (slash >= 0 && hostStart + slash + 1 < base.length) {
    return `${base.slice(0, hostStart + slash)}/${leaf}`;
  }
  return `${base.replace(/\/+$/, '')}/haip/${leaf}`;
}
