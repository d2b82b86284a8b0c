// Addresses of gRPC identity endpoints (SPIFFE Workload API, SPIRE agent admin socket), in the
// form SPIFFE_Workload_Endpoint.md §4 defines for SPIFFE_ENDPOINT_SOCKET:
//   unix:///absolute/path   no authority, an absolute path, nothing else;
//   tcp://IP:port           an IP address (not a name) and a port, nothing else.
// Anything else is rejected with the rule it broke, because these strings come from config and
// the environment and the operator has to fix them.
import { isIP } from 'node:net';
import { z } from 'zod';

export class GrpcEndpointError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GrpcEndpointError';
  }
}

export interface GrpcEndpoint {
  /** The address as configured, for logs and error messages. */
  readonly address: string;
  /** The gRPC target to dial (grpc-js naming: unix:/path, ipv4:IP:port, ipv6:[IP]:port). */
  readonly target: string;
}

const FORM = 'expected unix:///absolute/path or tcp://IP:port';

/** Parses and validates an endpoint address; throws GrpcEndpointError naming the broken rule. */
export function parseGrpcEndpoint(address: string): GrpcEndpoint {
  const fail = (why: string): never => {
    throw new GrpcEndpointError(`invalid endpoint address "${address}": ${why} (${FORM})`);
  };
  if (address.trim() !== address || address === '') fail('empty or surrounded by whitespace');
  const scheme = /^([a-zA-Z][a-zA-Z0-9+.-]*):/.exec(address)?.[1];
  if (scheme === 'unix') return parseUnix(address, fail);
  if (scheme === 'tcp') return parseTcp(address, fail);
  return fail(scheme === undefined ? 'no scheme' : `unsupported scheme "${scheme}"`);
}

function parseUnix(address: string, fail: (why: string) => never): GrpcEndpoint {
  // "unix:/path" and "unix:path" carry no authority part at all; the spec's form has an empty one.
  if (!address.startsWith('unix://')) fail('a unix address must be written unix:///absolute/path');
  const rest = address.slice('unix://'.length);
  if (!rest.startsWith('/')) fail('a unix address must not have an authority (host) part');
  if (/[?#]/.test(rest)) fail('a unix address must not have a query or fragment');
  let path: string;
  try {
    path = decodeURIComponent(rest);
  } catch {
    return fail('the path has invalid percent-encoding');
  }
  if (path.includes('\0')) fail('the path contains a NUL byte');
  if (path.length === 1) fail('the socket path is missing');
  return { address, target: `unix:${path}` };
}

function parseTcp(address: string, fail: (why: string) => never): GrpcEndpoint {
  let url: URL;
  try {
    url = new URL(address);
  } catch {
    return fail('not a valid URI');
  }
  if (url.username !== '' || url.password !== '') fail('a tcp address must not have userinfo');
  if (url.pathname !== '' || url.search !== '' || url.hash !== '') fail('a tcp address must not have a path, query or fragment');
  const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
  const family = isIP(host);
  if (family === 0) fail('the host of a tcp address must be an IP address, not a name');
  if (url.port === '' || url.port === '0') fail('a tcp address needs a port (1-65535)');
  return { address, target: family === 4 ? `ipv4:${host}:${url.port}` : `ipv6:[${host}]:${url.port}` };
}

/** A config field holding an endpoint address, checked by the same parser the providers use. */
export const grpcEndpointAddress = z.string().superRefine((address, ctx) => {
  try {
    parseGrpcEndpoint(address);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: (err as Error).message });
  }
});
