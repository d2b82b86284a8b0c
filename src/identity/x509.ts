// @peculiar/x509 resolves its algorithm providers through tsyringe, which needs the Reflect
// metadata polyfill loaded first. Every module imports the library through this file so that
// ordering holds no matter which module is loaded first.
import 'reflect-metadata';

export * as px509 from '@peculiar/x509';
