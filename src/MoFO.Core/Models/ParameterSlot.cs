using System.Reflection;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MoFO.Models;

/// <summary>
/// Puts a new tensor in the place of a module's registered parameter, as TorchSharp's own <c>Module._to</c> does when
/// it moves parameters: through the module's public settable property of that name when it has one (TorchSharp's
/// <c>Linear</c> and <c>LayerNorm</c>, our <see cref="TokenEmbedding"/>: the setter disposes the old tensor and
/// registers the new one); otherwise by registering the new parameter under the name and pointing the field that
/// holds it (the field of that component name, e.g. <see cref="LlamaRMSNorm"/>'s <c>weight</c>) at it — so that
/// <c>forward</c>, which reads the field, and <c>named_parameters</c>, which reads the registry, see the same tensor.
/// </summary>
public static class ParameterSlot
{
    static readonly MethodInfo Register =
        typeof(nn.Module).GetMethod("ConditionallyRegisterParameter", BindingFlags.Instance | BindingFlags.NonPublic, [typeof(string), typeof(Parameter)])
        ?? throw new MissingMethodException("TorchSharp's nn.Module.ConditionallyRegisterParameter(string, Parameter) was not found");

    public static void Replace(nn.Module owner, string name, Parameter value)
    {
        var type = owner.GetType();
        var property = type.GetProperty(name, BindingFlags.Instance | BindingFlags.Public);
        if (property is { CanWrite: true } && property.PropertyType.IsAssignableFrom(typeof(Parameter)))
        {
            property.SetValue(owner, value);
            return;
        }
        var old = owner.named_parameters(recurse: false).FirstOrDefault(p => p.name == name).parameter
                  ?? throw new ArgumentException($"{type.Name} has no parameter '{name}'");
        value.DetachFromDisposeScope();
        Register.Invoke(owner, [name, value]);
        FieldOf(type, name)?.SetValue(owner, value);
        if (!ReferenceEquals(old, value)) old.Dispose();
    }

    /// <summary>The instance field whose component name (TorchSharp's <c>ComponentName</c> attribute, else the field's
    /// name) is <paramref name="name"/> and that can hold a parameter, searched up the class hierarchy.</summary>
    static FieldInfo? FieldOf(Type type, string name)
    {
        for (var t = type; t is not null && t != typeof(object); t = t.BaseType)
            foreach (var f in t.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
                if (f.ComponentName() == name && f.FieldType.IsAssignableFrom(typeof(Parameter))) return f;
        return null;
    }
}
